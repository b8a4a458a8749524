"""Record the SHA-256 of a run's weights and of its config entries in its config.json.

    python scripts/hash_run_weights.py pretrained/*/     # every shipped run
    python scripts/hash_run_weights.py --force RUN       # after editing config.json on purpose

``save_run`` records these for every run the package writes; this script adds them to runs
saved before (the shipped ``pretrained/`` runs are republished with it). Each run is loaded
(and so verified) first: a run whose recorded hashes no longer match is refused, never
re-vouched for -- unless ``--force`` (the config was edited on purpose; the weights must still
match their recorded hash). ``run.load_run`` then refuses a flipped bit, a replaced weights file
or an edited config entry (tau range, pairs, domains, ...) with one line, exit 2 on the command
line.
"""

from __future__ import annotations

import argparse

from medshift_fast.run import read_run_config, record_run_hashes, run_digest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--force", action="store_true",
                    help="re-record the config digests of a config.json edited on purpose")
    a = ap.parse_args(argv)
    for p in a.runs:
        rec = record_run_hashes(p, force=a.force)
        files = " ".join(f"{k}={v[:12]}" for k, v in sorted(rec.items()) if k != "config")
        print(p, files, f"config entries={len(rec['config'])}",
              f"run=sha256:{run_digest(p, read_run_config(p))[:16]}")


if __name__ == "__main__":
    main()
