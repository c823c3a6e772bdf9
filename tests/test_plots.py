"""Every user string in a figure (class names, model names) is drawn literally, whatever characters it holds."""

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from petlab import plots

# Each would be parsed as mathtext (or fail to parse) if drawn as markup.
NAMES = ["$x^2$", "a$b", "$\\frac{$", "price $5 & $6", "50%_{sub}", "\\alpha$", "$$", "plain"]


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def sample_grid(tmp_path):
    items = []
    for i in range(len(NAMES)):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(path)
        items.append((path, i))
    return plots.sample_grid_figure(items, NAMES, "train samples")


FIGURES = {
    "class_counts": lambda tmp: plots.class_counts_figure({s: {n: 3 for n in NAMES} for s in ("train", "val")}, NAMES),
    "sample_grid": sample_grid,
    "confusion_counts": lambda tmp: plots.confusion_figure(np.eye(len(NAMES), dtype=int) * 3, NAMES, "a$b", False),
    "confusion_normalized": lambda tmp: plots.confusion_figure(np.ones((len(NAMES),) * 2), NAMES, "a$b", True),
    "profile": lambda tmp: plots.profile_comparison_figure({name: {"step_ms_mean": 1.0, "trainable_parameters": 10}
                                                            for name in NAMES[:3]}),
}


# text.usetex in a user's matplotlibrc would hand names to LaTeX: they must not go there either. (The profile
# figure lays itself out when made, which under usetex needs a LaTeX install for its own numbers.)
CASES = [(kind, usetex) for kind in FIGURES for usetex in (False, True) if not (usetex and kind == "profile")]


@pytest.mark.parametrize("kind, usetex", CASES, ids=[f"{k}-{'usetex_rc' if u else 'default_rc'}" for k, u in CASES])
def test_user_strings_are_drawn_literally(tmp_path, kind, usetex):
    with matplotlib.rc_context({"text.usetex": usetex}):
        fig = FIGURES[kind](tmp_path)
        drawn = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text() in NAMES or t.get_text() == "a$b"]
        if not usetex:
            fig.savefig(io.BytesIO(), format="png")  # mathtext would raise a parse error here
    expected = NAMES[:3] if kind == "profile" else NAMES
    assert set(expected) <= set(texts(fig))
    assert drawn and all(not t.get_usetex() and not t._parse_math for t in drawn)
    matplotlib.pyplot.close(fig)
