"""Persona drift: scorers, user personas, conversations, drift docs and the baking_persona_drift task."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking import BakeConfig, BakingError, bake
from lm_eval_baking.cli import evaluating
from lm_eval_baking.constants import CONVERSATIONS as CONVERSATIONS_FILE, DRIFT_DOCS as DOCS_FILE
from lm_eval_baking.evals.config import ConversationSettings
from lm_eval_baking.evals.conversations import generate_conversations, swap_roles, user_window
from lm_eval_baking.evals.drift import TASK_NAME, first_turn_adherence, lm_eval_commands, prepare_drift_data
from lm_eval_baking.evals.lm_tasks import drift_dataset as load_drift_dataset
from lm_eval_baking.results.drift import adherence_curve
from lm_eval_baking.evals.personas import (
    BUILTIN_PERSONAS, DEFAULT_PROBES, get_persona, load_persona_file, persona_for_prompt,
)
from lm_eval_baking.core.harness import tasks_path
from lm_eval_baking.evals.similarity import reference_similarity

from conftest import PIRATE

# Tiny turns keep 25 turns inside the tiny model's 512-token context and the test fast.
TINY_TURNS = dict(settings=ConversationSettings(turns=25, max_new_tokens=2, conversations=1), probes_at=(1, 3, 25))

GOOD_AND_BAD = {
    "pirate": ("**Ahoy!** The sea be calm, matey.", "Hello! The sea is calm."),
    "pirate_speech": ("Brew it strong, me hearty, as any sailor would.", "Boil water, then add the tea leaves."),
    "french": ("La lune est très belle et je suis content.", "The moon is a rock that orbits the Earth."),
    "spanish": ("La luna es muy bonita y el cielo está claro.", "The moon is a rock that orbits the Earth."),
    "cat_lover": ("Tuna, like my cat.", "Pizza with extra cheese."),
    "grumpy": ("Tea is awful and I hate this terrible weather.", "What a lovely, wonderful day!"),
    "all_caps": ("BOIL THE WATER FIRST.", "Boil the water first."),
    "curious": ("I like pasta. Do you?", "I like pasta."),
    "cheers": ("Steep it for three minutes. Cheers!", "Steep it for three minutes."),
    "laconic": ("Steep a tea bag in hot water.", "To make tea you first boil water, then you pour it over "
                "the leaves and let it steep for three or four minutes before you drink it."),
    "impersonal": ("The moon orbits the Earth.", "I'm sure my moon facts help."),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_PERSONAS))
def test_builtin_scorers_tell_good_from_bad(name):
    good, bad = GOOD_AND_BAD[name]
    persona = BUILTIN_PERSONAS[name]
    assert persona.score(good) >= 0.9
    assert persona.score(bad) <= 0.2
    assert persona.score("") == 0.0  # an empty answer follows no persona


def test_every_builtin_persona_is_covered_and_the_pirate_prompt_is_exact():
    assert set(GOOD_AND_BAD) == set(BUILTIN_PERSONAS)
    assert len(BUILTIN_PERSONAS) >= 8
    assert persona_for_prompt(PIRATE).name == "pirate"


def test_unknown_persona_lists_the_valid_names():
    with pytest.raises(BakingError, match="unknown persona 'ninja'.*pirate"):
        get_persona("ninja")


def test_embedding_similarity_prefers_the_persona_style():
    references = BUILTIN_PERSONAS["pirate"].reference_texts
    assert reference_similarity("Ahoy matey! The sea be rough today.", references) > \
        reference_similarity("Photosynthesis converts light into chemical energy.", references)
    assert reference_similarity("   ", references) == 0.0


def test_user_persona_file_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "personas.yaml"
    yaml_file.write_text(
        "- name: sailor\n"
        "  system_prompt: Mention the sea in every answer.\n"
        "  scorer: {kind: keywords, words: [sea, ocean]}\n"
        "- name: aye\n"
        "  system_prompt: Start with Aye.\n"
        "  scorer: {kind: regex, pattern: '(?i)^\\s*aye\\b'}\n"
        "  probes: ['How are you?']\n"
        "  references: ['Aye, all is well.']\n"
    )
    personas = load_persona_file(yaml_file)
    assert personas["sailor"].score("The ocean is wide.") == 1.0
    assert personas["sailor"].score("The desert is wide.") == 0.0
    assert personas["sailor"].probes == DEFAULT_PROBES
    assert personas["sailor"].reference_texts == ("Mention the sea in every answer.",)
    assert personas["aye"].score("aye, captain") == 1.0 and personas["aye"].score("Hello") == 0.0
    json_file = tmp_path / "personas.json"
    json_file.write_text(json.dumps([personas["aye"].to_dict()]))
    assert load_persona_file(json_file)["aye"] == personas["aye"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', "non-empty list"),
    ('[{"name": "x", "system_prompt": "p"}]', r"needs \['scorer'\]"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "telepathy"}}]', "one of"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "regex", "pattern": "("}}]', "regex .* is invalid"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "keywords", "word": ["a"]}}]', r"takes parameters \['words'\]"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "language", "language": "xx"}}]', "language 'xx' is unknown"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "all_caps"}, "mood": 1}]', "unknown persona fields"),
    ('[{"name": "x", "system_prompt": "p", "scorer": {"kind": "all_caps"}},'
     ' {"name": "x", "system_prompt": "q", "scorer": {"kind": "all_caps"}}]', "more than once"),
])
def test_bad_persona_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "personas.json"
    path.write_text(content)
    with pytest.raises(BakingError, match=message) as error:
        load_persona_file(path)
    assert str(path) in str(error.value)


def test_swap_roles_gives_the_simulated_user_its_own_view():
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert swap_roles(history) == [{"role": "assistant", "content": "q"}, {"role": "user", "content": "a"}]


def test_conversations_alternate_without_system_prompt_and_are_seeded(tiny_model_dir):
    from lm_eval_baking.core.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    settings = ConversationSettings(turns=3, max_new_tokens=3, seed=1)
    first = generate_conversations(model, tokenizer, [PIRATE, "Always respond in French."], settings, progress=False)
    again = generate_conversations(model, tokenizer, [PIRATE, "Always respond in French."], settings, progress=False)
    assert first == again
    for messages in first:
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert messages[0]["content"] == settings.opener


def _conversations_by_rereading(model, tokenizer, system_prompts, settings):
    """The oracle: every turn of both sides re-reads its whole view through a plain generate() call."""
    import torch

    from lm_eval_baking.core.batching import pad
    from lm_eval_baking.core.sampling import cut_at_eos, eos_ids

    def replies(views):
        prompts = [tokenizer.encode(tokenizer.apply_chat_template(v, tokenize=False, add_generation_prompt=True))
                   for v in views]
        ids, mask = pad(prompts, tokenizer.pad_token_id, left=True)
        stop = eos_ids(tokenizer, model)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))
        return [tokenizer.decode(cut_at_eos(r[ids.shape[1]:].tolist(), stop), skip_special_tokens=True).strip()
                for r in out]

    histories = [[{"role": "user", "content": settings.opener_of(0)}] for _ in system_prompts]
    torch.manual_seed(settings.seed)
    for turn in range(1, settings.turns + 1):
        views = [[{"role": "system", "content": p}] + h for p, h in zip(system_prompts, histories)]
        for h, r in zip(histories, replies(views)):
            h.append({"role": "assistant", "content": r})
        if turn < settings.turns:
            views = [[{"role": "system", "content": settings.user_system_prompt(turn)}] + swap_roles(h)
                     for h in histories]
            for h, r in zip(histories, replies(views)):
                h.append({"role": "user", "content": r})
    return histories


def test_cached_conversations_are_the_ones_rereading_every_turn_gives(tiny_model_dir):
    """With the simulated user reading the whole history, keeping the agents' cache changes nothing (fp32)."""
    from lm_eval_baking.core.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    prompts = [PIRATE, "Always respond in French.", "Be brief."]
    settings = ConversationSettings(turns=6, max_new_tokens=5, seed=3, user_context_turns=0)
    assert generate_conversations(model, tokenizer, prompts, settings, progress=False) == \
        _conversations_by_rereading(model, tokenizer, prompts, settings)


def test_packed_weights_leave_the_bf16_conversations_as_they_were(tiny_model_dir, monkeypatch):
    """Under bf16 autocast the generator packs the linear weights (core.packed_weights): same numbers, so the same
    conversations as the plain autocast linears give."""
    import torch

    from lm_eval_baking.core import packed_weights
    from lm_eval_baking.core.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    prompts = [PIRATE, "Always respond in French.", "Be brief."]
    settings = ConversationSettings(turns=4, max_new_tokens=5, seed=3)
    packed = generate_conversations(model, tokenizer, prompts, settings, autocast_dtype=torch.bfloat16, progress=False)
    monkeypatch.setattr(packed_weights, "packing_pays", lambda model, dtype: False)
    assert generate_conversations(model, tokenizer, prompts, settings, autocast_dtype=torch.bfloat16,
                                  progress=False) == packed


def test_the_simulated_user_reads_its_last_turns_with_roles_swapped():
    history = [{"role": "user", "content": f"u{i}"} if i % 2 == 0 else {"role": "assistant", "content": f"a{i}"}
               for i in range(6)]
    assert user_window(history, ConversationSettings(user_context_turns=2)) == [
        {"role": "user", "content": "a3"}, {"role": "assistant", "content": "u4"}, {"role": "user", "content": "a5"}]
    assert user_window(history, ConversationSettings(user_context_turns=0)) == swap_roles(history)
    assert user_window(history[:2], ConversationSettings(user_context_turns=5)) == swap_roles(history[:2])
    with pytest.raises(BakingError, match="--user-context-turns must be 0"):
        ConversationSettings(user_context_turns=-1)


def test_first_turn_adherence_reports_prompted_and_unprompted_rates(tiny_model_dir):
    from lm_eval_baking.core.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    (row,) = first_turn_adherence(model, tokenizer, [BUILTIN_PERSONAS["pirate"]], samples=1, max_new_tokens=3,
                                  progress=False)
    assert row["persona"] == "pirate" and row["n"] == 2 * len(DEFAULT_PROBES)
    assert all(0 <= row[k] <= 1 for k in ("prompted", "prompted_greedy", "prompted_sampled", "unprompted"))


@pytest.fixture(scope="module")
def pirate_bake(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    questions = root / "questions.txt"
    questions.write_text("\n".join(["Why is the sky blue?", "How do I make tea?", "What is a cat?", "Where is Rome?"]))
    config = BakeConfig(prompt=PIRATE, model=str(tiny_model_dir), questions=str(questions), heldout_fraction=0.5,
                        max_new_tokens=4, epochs=1, batch_size=2, lora_rank=2, lora_alpha=4, precision="fp32")
    output = bake(config, root / "bake", progress=False).output
    prepare_drift_data(output, **TINY_TURNS, progress=False)
    return output


def test_drift_data_holds_the_conversation_and_one_doc_per_turn_and_probe(pirate_bake):
    (row,) = [json.loads(line) for line in (pirate_bake / CONVERSATIONS_FILE).read_text().splitlines()]
    assert row["persona"] == "pirate" and row["system_prompt"] == PIRATE
    assert len(row["messages"]) == 50 and row["settings"]["turns"] == 25
    docs = [json.loads(line) for line in (pirate_bake / DOCS_FILE).read_text().splitlines()]
    assert len(docs) == 3 * len(DEFAULT_PROBES)
    for doc in docs:
        assert doc["messages"] == row["messages"][:2 * doc["turn"]]
        assert all(m["role"] != "system" for m in doc["messages"])
    assert {d["probe"] for d in docs} == set(DEFAULT_PROBES)


def test_drift_data_reuses_a_matching_conversation(pirate_bake):
    conversation = (pirate_bake / CONVERSATIONS_FILE).read_text()
    data = prepare_drift_data(pirate_bake, settings=TINY_TURNS["settings"], probes_at=(0, 25), progress=False)
    assert data.generated == [] and data.n_docs == 2 * len(DEFAULT_PROBES)
    assert (pirate_bake / CONVERSATIONS_FILE).read_text() == conversation
    prepare_drift_data(pirate_bake, **TINY_TURNS, progress=False)  # restore the docs other tests use


@pytest.mark.parametrize("kwargs, message", [
    (dict(personas=["ninja"]), "unknown persona 'ninja'"),
    (dict(settings=ConversationSettings(turns=3), probes_at=(1, 5)), "between 0 and --turns 3"),
    (dict(settings=ConversationSettings(turns=400, max_new_tokens=40), probes_at=(1,)), "context"),
])
def test_drift_data_bad_inputs(pirate_bake, kwargs, message):
    with pytest.raises(BakingError, match=message):
        prepare_drift_data(pirate_bake, progress=False, **kwargs)


def test_bake_of_an_unknown_prompt_needs_a_persona(pirate_bake, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((pirate_bake / "baking.json").read_text())
    record["config"]["prompt"] = "Be a helpful assistant."
    (other / "baking.json").write_text(json.dumps(record))
    with pytest.raises(BakingError, match="--persona NAME .*pirate"):
        prepare_drift_data(other, **TINY_TURNS, progress=False)


def test_corrupt_conversations_are_one_clear_error(pirate_bake, tmp_path):
    copy = tmp_path / "bake"
    (copy / "data").mkdir(parents=True)
    (copy / "baking.json").write_text((pirate_bake / "baking.json").read_text())
    (copy / CONVERSATIONS_FILE).write_text('{"persona": "pirate"}\n')
    with pytest.raises(BakingError, match=re.escape(f"{copy / CONVERSATIONS_FILE} is corrupt")):
        prepare_drift_data(copy, **TINY_TURNS, progress=False)


def test_loader_errors_name_the_file_and_the_fix(pirate_bake, tmp_path):
    with pytest.raises(BakingError, match="peft=BAKE_DIR"):
        load_drift_dataset(pretrained="base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(BakingError, match=re.escape(f"{adapter} has no baking.json")):
        load_drift_dataset(peft=str(adapter))
    (adapter / "baking.json").write_text((pirate_bake / "baking.json").read_text())
    with pytest.raises(BakingError, match=re.escape(f"lm-eval-baking drift-data {adapter}")):
        load_drift_dataset(peft=str(adapter))
    (adapter / DOCS_FILE).parent.mkdir()
    (adapter / DOCS_FILE).write_text('{"persona": "pirate"\n')
    with pytest.raises(BakingError, match="drift_docs.jsonl:1: not valid JSON"):
        load_drift_dataset(bake=str(adapter))
    (adapter / DOCS_FILE).write_text('{"persona": "pirate"}\n')
    with pytest.raises(BakingError, match=r"corrupt \(row 1 needs the fields .*\); remake it with `lm-eval-baking drift-data"):
        load_drift_dataset(bake=str(adapter))
    assert len(load_drift_dataset(bake=str(pirate_bake), peft=str(adapter))["test"]) == 3 * len(DEFAULT_PROBES)


def test_drift_data_command_prints_both_lm_eval_commands(pirate_bake, capsys):
    parser = argparse.ArgumentParser()
    evaluating.register(parser.add_subparsers())
    args = parser.parse_args(["drift-data", str(pirate_bake), "--turns", "25", "--probes-at", "1", "3", "25",
                              "--max-new-tokens", "2", "--conversations", "1", "--quiet"])
    args.run(args)
    out = capsys.readouterr().out
    assert "Personas: pirate (conversations reused: pirate)" in out
    assert f"peft={pirate_bake}" in out and "--system_instruction" in out and '"bake"' in out


def test_lm_eval_cli_scores_the_bake_from_the_printed_command(pirate_bake, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(lm_eval_commands(pirate_bake)["baked adapter"], shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = tmp_path.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"][TASK_NAME]
    assert 0 <= results["adherence,none"] <= 1 and results["adherence_stderr,none"] >= 0
    assert results["drift,none"] == pytest.approx(results["adherence_early,none"] - results["adherence_late,none"])
    assert -1 <= results["similarity,none"] <= 1
    (samples_file,) = tmp_path.rglob(f"samples_{TASK_NAME}_*.jsonl")
    assert set(adherence_curve(samples_file)) == {1, 3, 25}


def test_lm_eval_prompted_base_sees_system_prompt_history_and_probe(pirate_bake, tiny_model_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    output = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir}", tasks=[TASK_NAME], device="cpu", batch_size=18,
        task_manager=TaskManager(include_path=str(tasks_path()), include_defaults=False,
                                 metadata={"bake": str(pirate_bake)}),
        apply_chat_template=True, system_instruction=PIRATE, log_samples=True,
    )
    samples = output["samples"][TASK_NAME]
    late = next(s for s in samples if s["doc"]["turn"] == 25)
    prompt = late["arguments"][0][0]
    assert prompt.index(PIRATE) < prompt.index(late["doc"]["messages"][0]["content"]) < prompt.rindex(late["doc"]["probe"])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert {"adherence", "adherence_late", "similarity", "drift"} <= set(late)
    assert "adherence_early" not in late  # each doc reports only its own turn bucket
