"""The model card written with a bake names its base model by Hub id, or not at all, and reads as a valid card.

`huggingface_hub.ModelCard.validate()` cannot run here: it POSTs the card to the Hub's
/api/validate-yaml endpoint (push_to_hub calls it before an upload). Offline, the card is checked the
way huggingface_hub itself reads one: `ModelCard.load` parses the YAML front matter into ModelCardData
(a front matter that is not a mapping is a ValueError), base_model must pass `validate_repo_id`, and
the keys the Hub files a PEFT adapter under (library_name, pipeline_tag, tags) must be there.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id

from lm_eval_baking.artifacts.bake_dir import BakeRecord, model_card
from lm_eval_baking.constants import DEFAULT_MODEL_HUB_ID, MODEL_CARD
from lm_eval_baking.core.hub import hub_model_id


def checked_offline(path):
    """The card's metadata, checked as far as huggingface_hub can without the Hub."""
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert isinstance(data.tags, list) and data.tags and all(isinstance(tag, str) for tag in data.tags)
    if data.base_model is not None:
        validate_repo_id(data.base_model)  # raises HFValidationError on a path
    assert ModelCard(str(card)).data.to_dict() == data.to_dict(), "the card does not survive a round trip"
    return data


def card_for(small_bake, tmp_path, model: str, name_or_path: str):
    record = BakeRecord.from_pretrained(small_bake)
    record.config["model"] = model
    record.base_model["name_or_path"] = name_or_path
    path = tmp_path / MODEL_CARD
    path.write_text(model_card(record), encoding="utf-8")
    return checked_offline(path)


def test_a_bake_of_a_local_model_with_no_known_id_leaves_base_model_out(small_bake, tiny_model_dir):
    data = checked_offline(small_bake / MODEL_CARD)
    assert data.base_model is None
    front_matter = (small_bake / MODEL_CARD).read_text("utf-8").split("---")[1]
    assert str(tiny_model_dir) not in front_matter


def test_the_default_model_and_a_hub_id_are_named_by_their_id(small_bake, tmp_path, default_model_dir):
    assert card_for(small_bake, tmp_path, "default", str(default_model_dir)).base_model == DEFAULT_MODEL_HUB_ID
    # the folder `lm-eval-baking model default` prints, given as --model
    assert card_for(small_bake, tmp_path, str(default_model_dir), str(default_model_dir)).base_model == \
        DEFAULT_MODEL_HUB_ID
    assert card_for(small_bake, tmp_path, "EleutherAI/pythia-14m", "EleutherAI/pythia-14m").base_model == \
        "EleutherAI/pythia-14m"


def test_a_local_folder_is_named_only_by_an_id_it_genuinely_has(tmp_path, tiny_model_dir):
    named = tmp_path / "named"
    shutil.copytree(tiny_model_dir, named)
    config = json.loads((named / "config.json").read_text())
    for value, expected in [("org/some-model", "org/some-model"), (str(tmp_path), None), ("./here", None),
                            ("not a valid id", None), ("", None)]:
        (named / "config.json").write_text(json.dumps({**config, "_name_or_path": value}))
        assert hub_model_id(str(named), str(named)) == expected, value
    snapshot = tmp_path / "hub" / "models--org--cached-model" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot), str(snapshot)) == "org/cached-model"
    assert hub_model_id(str(tiny_model_dir), str(tiny_model_dir)) is None  # no _name_or_path
    assert hub_model_id("no/such/folder/or-id", None) is None
    assert hub_model_id(None) == DEFAULT_MODEL_HUB_ID


VALID = "library_name: peft\npipeline_tag: text-generation\ntags: [lora]\n"


@pytest.mark.parametrize("front_matter", ["- a list\n", "base_model: [unclosed\n",
                                          VALID + "base_model: /root/.cache/lm_eval_baking/models/SmolLM2\n"])
def test_the_offline_check_refuses_what_the_hub_would(tmp_path, front_matter):
    path = tmp_path / MODEL_CARD
    path.write_text(f"---\n{front_matter}---\n# card\n")
    with pytest.raises((ValueError, yaml.YAMLError)):  # HFValidationError is a ValueError
        checked_offline(path)
