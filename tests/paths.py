"""Where the user's examples live: ``../shared`` beside the repository (CI clones it so too)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "examples"
SEED_MANIFESTS = EXAMPLES / "seed-manifests"
CNI_EXAMPLES = EXAMPLES / "cni"
