"""The work folder's state.json is a versioned record too: a newer one is refused, an older one reads."""

from __future__ import annotations

import json

import pytest

from lm_eval_baking.constants import WORK_FORMAT, WORK_STATE
from lm_eval_baking.errors import BakingError
from lm_eval_baking.training.workdir import WorkDir


@pytest.mark.parametrize("version, ok", [(None, True), (1, True), (2, False)])
def test_state_version_is_checked(tmp_path, version, ok):
    work = WorkDir(tmp_path / "bake", writer=True)
    work.path.mkdir(parents=True)
    state = {"format": WORK_FORMAT, "identity": {"config": {}}, "resumes": []}
    if version is not None:
        state["format_version"] = version
    (work.path / WORK_STATE).write_text(json.dumps(state))
    if ok:
        assert work.state()["identity"] == {"config": {}}
    else:
        with pytest.raises(BakingError, match="format version 2, newer than this lm-eval-baking reads"):
            work.state()
