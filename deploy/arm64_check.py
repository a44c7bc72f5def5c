"""`make arm64-check`: run the device install and edge-classify in emulated arm64 Raspberry Pi OS userlands.

The check lives in the package deploy/arm64/ (its __init__ says which module holds what); this script
is the command `make arm64-check` and CI run: `python deploy/arm64_check.py --out OUT`.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `deploy.` and `edge_runtime.` from the checkout
    from deploy.arm64.cli import main

    main(prog_name="arm64-check")
