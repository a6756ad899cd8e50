"""docs/paper-settings.md states params.yaml's values for the paper profiles."""

import re
from pathlib import Path

from g2rl_core.config import load_profile

REPO = Path(__file__).resolve().parents[1]


def _value(cfg, name: str):
    obj = cfg
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def test_docs_table_matches_params_yaml():
    rows = re.findall(r"^\| `([\w.]+)`[^|]*\| ([^|]+) \|", (REPO / "docs" / "paper-settings.md").read_text(), re.M)
    assert len(rows) >= 20
    small = load_profile("paper-1_7b", REPO / "params.yaml")
    large = load_profile("paper-4b", REPO / "params.yaml")
    for name, stated in rows:
        method = "entropy" if name == "entropy_coeff" else "g2rl"
        values = {str(_value(p.train_config(method, 0), name)) for p in (small, large)}
        expected = set(stated.strip().split(" / "))
        assert {str(float(v)) if re.fullmatch(r"[\d.e+-]+", v) else v for v in expected} == {
            str(float(v)) if re.fullmatch(r"[\d.e+-]+", v) else v for v in values
        }, name
