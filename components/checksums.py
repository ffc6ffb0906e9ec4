"""sha256 of every pinned release file: PINNED_SHA256[component][version][arch][filename].

Data only, copied from upstream's published sums (sources named per component); a version bump
adds a block here and is reviewed as such. Filled in below.
"""

PINNED_SHA256: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
