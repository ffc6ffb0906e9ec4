"""The Pulumi engine stand-in: runs the program under the SDK's mock runtime, as the engine would.

No Pulumi CLI or provider plugin is needed. `runtime.run_program` registers every resource of
`__main__.py`; `mocks.RecordingMocks` records them (the unit tests' view, and `preview`);
`harness.Engine` executes them for real (keys and certs from `providers`, commands over SSH and
SFTP) and keeps state between runs as the engine keeps its checkpoint. `make lab` deploys with it
when the Pulumi CLI is not installed; `tests/unit/test_harness.py` holds it to the engine's and
the providers' documented behaviour.
"""
