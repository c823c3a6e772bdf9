"""What one stage records and a later one reads back, in one place: the form of a weights source that describes itself."""

from __future__ import annotations

DESCRIBED_FILE = " (file "  # weights_source of a file that describes itself: "<description> (file <path>)"


def weights_label(info: dict) -> str:
    """What results say beside the backbone's name about its weights (`info` as build_probe records it): 'random
    weights', the description its weights file carries (a stand-in's), or '' for the weights the name implies."""
    if not info.get("pretrained", True):
        return "random weights"
    source = info.get("weights_source", "")
    return source.split(DESCRIBED_FILE)[0] if DESCRIBED_FILE in source and not source.startswith("file ") else ""
