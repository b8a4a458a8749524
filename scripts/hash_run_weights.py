"""Record the SHA-256 of a run's weights in its config.json (runs saved before the hashes were).

    python scripts/hash_run_weights.py pretrained/demo128 pretrained/demo128_student

Each run is loaded (and so verified against its config) first; ``run.load_run`` then refuses a
weights file that no longer matches. Runs without the entry still load, unchecked.
"""

from __future__ import annotations

import sys

from medshift_fast.run import record_weight_hashes


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    for p in paths:
        hashes = record_weight_hashes(p)
        print(p, " ".join(f"{k}={v[:12]}" for k, v in sorted(hashes.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
