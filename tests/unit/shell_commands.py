"""The external commands a POSIX sh script runs, read from the syntax tree `shfmt` parses (not
from a regular expression over its text, which cannot tell a command from a word in a message).

Only commands named by a literal word count: `"$pm" install` runs whatever `$pm` holds, which
the script decides at run time. A command that runs another (`sudo -n`, `timeout 20`, `xargs`,
`find -exec`) counts along with the one it runs, and a literal script handed to `sh -c` (or fed
to `sh -s` by a heredoc) is read as a script of its own.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["commands"]

# What dash runs itself, however the script spells it. Reserved words (`if`, `while`, `{`, `!`...)
# need no entry: the parser turns them into syntax, so they never reach us as a command's name.
_BUILTINS = frozenset({
    ".", ":", "[", "alias", "bg", "break", "cd", "chdir", "command", "continue", "echo", "eval", "exec", "exit",
    "export", "false", "fc", "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly",
    "return", "set", "shift", "test", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "wait",
})

_SHELLS = frozenset({"sh", "dash"})

# a word as the shell reads it, or None when an expansion decides it at run time
_Word = str | None
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class _Wrapper:
    """How a command that runs another reads its own arguments: its options stop at the first word
    that is not one (as getopt's "+" mode does), then come `operands` words of its own, then the
    command it runs, unless a `script` option hands it a script for `sh -c` instead (flock -c)."""

    valued: frozenset[str] = field(default_factory=frozenset)  # options whose value is the next word
    operands: int = 0
    script: frozenset[str] = field(default_factory=frozenset)


_WRAPPERS = {
    "sudo": _Wrapper(frozenset({"-u", "--user", "-g", "--group", "-p", "--prompt", "-C", "--close-from",
                               "-D", "--chdir", "-r", "--role", "-t", "--type", "-T", "--command-timeout",
                               "-U", "--other-user", "-R", "--chroot"})),
    "env": _Wrapper(frozenset({"-u", "--unset", "-C", "--chdir"})),
    "timeout": _Wrapper(frozenset({"-s", "--signal", "-k", "--kill-after"}), operands=1),
    "nice": _Wrapper(frozenset({"-n", "--adjustment"})),
    "nohup": _Wrapper(),
    "setsid": _Wrapper(),
    "exec": _Wrapper(),
    "command": _Wrapper(),  # `command -v`/`-V` only asks where a command is: see _invoked
    "xargs": _Wrapper(frozenset({"-a", "--arg-file", "-d", "--delimiter", "-E", "-I", "-L", "--max-lines",
                                "-n", "--max-args", "-P", "--max-procs", "-s", "--max-chars"})),
    "flock": _Wrapper(frozenset({"-w", "--timeout", "--wait", "-E", "--conflict-exit-code"}), operands=1,
                     script=frozenset({"-c", "--command"})),
    "systemd-run": _Wrapper(frozenset({"-u", "--unit", "-p", "--property", "-E", "--setenv", "-M", "--machine",
                                      "-H", "--host", "--description", "--slice", "--uid", "--gid", "--nice",
                                      "--working-directory"})),
}

# find's actions that run a command: the word after one is that command's name
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


@dataclass(frozen=True)
class _Script:
    """A script a shell is handed literally, read as one of its own."""

    text: str


def commands(script: str) -> set[str]:
    """The external commands `script` runs: each literal command name as written (an absolute path
    stays one), without dash's builtins and the functions the script defines. Raises ValueError
    with shfmt's message when `script` is not POSIX sh."""
    return set(_commands(script))


@functools.cache
def _commands(script: str) -> frozenset[str]:
    """`commands`, parsed once per text: the tests' stacks render one script for many hosts."""
    tree = _parse(script)
    defined = {node["Name"]["Value"] for node in _nodes(tree) if node.get("Type") == "FuncDecl"}
    found: set[str] = set()
    for stmt in _nodes(tree):
        call = stmt.get("Cmd")
        if not isinstance(call, dict) or call.get("Type") != "CallExpr":
            continue
        words = [_literal(word["Parts"]) for word in call.get("Args", [])]
        for item in _invoked(words, _heredoc(stmt)):
            if isinstance(item, _Script):
                try:
                    found |= commands(item.text)  # its own functions: the caller's are not defined there
                except ValueError as error:
                    raise ValueError(f"{error}\n  in the script handed to a shell on line {stmt['Pos']['Line']}") from None
            elif item not in _BUILTINS and item not in defined:
                found.add(item)
    return frozenset(found)


def _parse(script: str) -> dict[str, Any]:
    shfmt = shutil.which("shfmt")
    if shfmt is None:
        raise RuntimeError("shfmt is missing: `make deps` installs it (apt-get install shfmt)")
    done = subprocess.run([shfmt, "-ln", "posix", "--to-json"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("<standard input>:")
        line = re.match(r"(\d+):", message)
        lines = script.splitlines()
        if line and 0 < int(line[1]) <= len(lines):
            message += f"\n  line {line[1]}: {lines[int(line[1]) - 1].strip()}"
        raise ValueError(f"not POSIX sh: {message}")
    tree: dict[str, Any] = json.loads(done.stdout)
    return tree


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the tree, at any depth: a command substitution in a heredoc inside a
    function is as much a part of the script as a command at its top."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def _literal(parts: list[dict[str, Any]], in_double_quotes: bool = False) -> _Word:
    """The word the shell makes of `parts`, or None if it depends on an expansion."""
    text = []
    for part in parts:
        if part["Type"] == "Lit":
            text.append(_unescape(part.get("Value", ""), in_double_quotes))
        elif part["Type"] == "SglQuoted":
            text.append(part.get("Value", ""))
        elif part["Type"] == "DblQuoted":
            inner = _literal(part.get("Parts", []), in_double_quotes=True)
            if inner is None:
                return None
            text.append(inner)
        else:
            return None
    return "".join(text)


def _unescape(text: str, in_double_quotes: bool) -> str:
    # shfmt keeps backslashes as written; inside double quotes (and a heredoc) one quotes only these
    special = "$`\"\\\n" if in_double_quotes else None

    def unquote(match: re.Match[str]) -> str:
        char = match[1]
        if char == "\n":
            return ""
        return char if special is None or char in special else match[0]

    return re.sub(r"\\(.)", unquote, text, flags=re.DOTALL)


def _heredoc(stmt: dict[str, Any]) -> _Word:
    """The literal text a heredoc feeds to the statement's standard input, if it has one."""
    text: _Word = None
    for redirect in stmt.get("Redirs", []):
        if "Hdoc" in redirect and redirect.get("N", {}).get("Value", "0") == "0":
            delimiter = redirect["Word"]["Parts"]
            quoted = any(p["Type"] != "Lit" or "\\" in p.get("Value", "") for p in delimiter)
            body = (redirect["Hdoc"] or {}).get("Parts", [])
            if quoted:  # the body is handed over as written
                text = "".join(p.get("Value", "") for p in body)
            else:
                text = _literal(body, in_double_quotes=True)
    return text


def _invoked(words: Sequence[_Word], stdin: _Word) -> Iterator[str | _Script]:
    """The names the simple command `words` runs (itself, and what it wraps), and the literal
    scripts it hands to a shell."""
    name = words[0] if words else None
    if name is None:
        return
    yield name
    args, base = words[1:], name.rsplit("/", 1)[-1]
    if base in _SHELLS:
        yield from _shell_script(args, stdin)
    elif base == "find":
        for i, word in enumerate(args):
            if word in _FIND_EXEC:
                yield from _invoked(args[i + 1:], None)
    elif base in _WRAPPERS:
        wrapper, i = _WRAPPERS[base], 0
        while i < len(args):
            option = args[i]
            if option is None or not option.startswith("-"):
                break
            i += 1
            if option == "--":
                break
            if base == "command" and option in ("-v", "-V"):
                return  # it only asks what the name is
            if option in wrapper.valued:
                i += 1
        rest = args[i + wrapper.operands:]
        if rest and rest[0] in wrapper.script:
            if len(rest) > 1 and rest[1] is not None:
                yield _Script(rest[1])
            return
        while rest and _ASSIGNMENT.match(rest[0] or ""):  # sudo and env take VAR=value before the command
            rest = rest[1:]
        yield from _invoked(rest, stdin)


def _shell_script(args: Sequence[_Word], stdin: _Word) -> Iterator[_Script]:
    """The script `sh args` runs: the operand after `-c`, or its standard input with `-s` or no
    operand at all (a script file, or a script only known at run time, is not ours to read)."""
    i, from_operand, from_stdin = 0, False, False
    while i < len(args):
        option = args[i]
        if option is None or option[:1] not in ("-", "+"):
            break
        i += 1
        if option == "--":
            break
        if option in ("-o", "+o"):
            i += 1
        elif option.startswith("-"):
            from_operand = from_operand or "c" in option
            from_stdin = from_stdin or "s" in option
    operand = args[i] if i < len(args) else None
    if from_operand and operand is not None:
        yield _Script(operand)
    elif (from_stdin or i == len(args)) and stdin is not None:
        yield _Script(stdin)
