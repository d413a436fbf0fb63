import pytest
import torch
from safetensors.torch import load_file

from ptdist.backbones import InitMode, PromptInit, initial_prompt, load_backbone, parse_init
from ptdist.backbones.presets import preset_dir
from ptdist.errors import PtdistError

ROWS = [{"text": "the movie was great", "label": 1}, {"text": "awful", "label": 0}]
WORDS = ["negative", "positive"]


@pytest.mark.parametrize("name,kind,ffn", [("tiny-roberta", "mlm", None),
                                            ("tiny-t5", "seq2seq", "relu"),
                                            ("tiny-t5-v1_1", "seq2seq", "gated-gelu")])
def test_presets_load_frozen_with_their_architecture(name, kind, ffn):
    backbone = load_backbone(name)
    assert backbone.kind == kind
    assert backbone.hidden_size == 64
    assert not any(p.requires_grad for p in backbone.parameters())
    if ffn:
        assert backbone.model.config.feed_forward_proj == ffn
    prompts = torch.randn(2, 4, 64)
    batch = backbone.collate(ROWS, WORDS)
    assert backbone.class_logits(prompts, batch).shape == (2, 2)
    assert backbone.loss(prompts, batch).shape == (2,)


def test_preset_weights_are_the_same_in_every_cache(tmp_path, monkeypatch):
    first = load_file(preset_dir("tiny-roberta") / "model.safetensors")
    monkeypatch.setenv("PTDIST_CACHE", str(tmp_path))
    second = load_file(preset_dir("tiny-roberta") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_mlm_reads_the_mask_right_after_the_prompt():
    backbone = load_backbone("tiny-roberta")
    batch = backbone.collate(ROWS, WORDS)
    assert (batch["input_ids"][:, 0] == backbone.tokenizer.mask_token_id).all()
    prompts = torch.randn(2, 3, 64)
    embeds = torch.cat([prompts, backbone.word_embeddings(batch["input_ids"])], 1)
    mask = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], 1)
    full = backbone.model(inputs_embeds=embeds, attention_mask=mask).logits
    expected = full[:, 3].gather(1, backbone.label_token_ids(WORDS).expand(2, -1))
    # The head runs at the mask alone there, so equal up to float rounding, not bit for bit.
    torch.testing.assert_close(backbone.class_logits(prompts, batch), expected, atol=1e-5,
                               rtol=1e-5)


def test_t5_classification_trains_on_label_text_and_reads_first_decoder_step():
    backbone = load_backbone("tiny-t5")
    batch = backbone.collate(ROWS, WORDS)
    eos = backbone.tokenizer.eos_token_id
    positive = backbone.tokenizer(" positive", add_special_tokens=False).input_ids
    assert batch["target_ids"][0, :len(positive) + 1].tolist() == positive + [eos]
    assert backbone.label_token_ids(WORDS)[1].item() == positive[0]


def test_mlm_refuses_generation_tasks():
    backbone = load_backbone("tiny-roberta")
    with pytest.raises(PtdistError, match="encoder-decoder"):
        backbone.generate(torch.zeros(1, 2, 64), {}, 4)


def test_prompt_width_mismatch_is_a_clear_error():
    backbone = load_backbone("tiny-roberta")
    with pytest.raises(PtdistError, match="width 32 does not match .*hidden size 64"):
        backbone.class_logits(torch.zeros(2, 4, 32), backbone.collate(ROWS, WORDS))


def test_init_modes():
    backbone = load_backbone("tiny-t5")
    emb, tok = backbone.word_embeddings, backbone.tokenizer
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    specials = backbone.special_ids()
    rand = initial_prompt(PromptInit(InitMode.RANDOM), emb, 5, specials, tok, gen())
    assert rand.shape == (5, 64) and rand.abs().max() <= 0.5
    vocab = initial_prompt(PromptInit(InitMode.VOCAB), emb, 5, specials, tok, gen())
    rows = [i for i in range(emb.num_embeddings) if torch.equal(emb.weight[i], vocab[0])]
    assert rows and rows[0] not in specials
    text = initial_prompt(PromptInit(InitMode.TEXT, text="good movie"), emb, 5, specials,
                          tok, gen())
    ids = tok("good movie", add_special_tokens=False).input_ids
    assert torch.equal(text[len(ids)], emb.weight[ids[0]])  # the text repeats to fill L
    art = torch.randn(5, 64)
    from_prompt = PromptInit(InitMode.PROMPT, prompt="x")
    assert torch.equal(initial_prompt(from_prompt, emb, 5, specials, tok, gen(), art), art)
    with pytest.raises(PtdistError, match=r"shape \[5, 32\] .* needs \[5, 64\]"):
        initial_prompt(from_prompt, emb, 5, specials, tok, gen(), torch.zeros(5, 32))


@pytest.mark.parametrize("written, init", [
    ("random", PromptInit(InitMode.RANDOM)),
    ("vocab", PromptInit(InitMode.VOCAB)),
    ("text:good movie", PromptInit(InitMode.TEXT, text="good movie")),
    ("prompt:/store/p.safetensors", PromptInit(InitMode.PROMPT, prompt="/store/p.safetensors")),
])
def test_an_init_reads_from_and_writes_to_its_one_string_form(written, init):
    """The written form is sugar for the data: read into the same `PromptInit`, and written
    back byte for byte (that string is what a prompt id hashes and a manifest records)."""
    assert parse_init(written) == init and str(init) == written


def test_the_words_of_a_written_init_are_stripped():
    assert parse_init("text:  good movie ") == PromptInit(InitMode.TEXT, text="good movie")


@pytest.mark.parametrize("written", ["zeros", "text:", "text:  ", "prompt", "random:x", "Text:a"])
def test_an_unknown_init_names_the_written_forms(written):
    with pytest.raises(PtdistError, match="unknown prompt init .*use one of: random, vocab, "
                                          "text:SOME WORDS, prompt:ID_OR_PATH"):
        parse_init(written)


@pytest.mark.parametrize("fields", [dict(mode=InitMode.TEXT), dict(mode=InitMode.PROMPT),
                                    dict(mode=InitMode.RANDOM, text="words"),
                                    dict(mode=InitMode.TEXT, text="a", prompt="b")])
def test_an_init_takes_exactly_the_field_its_mode_reads(fields):
    with pytest.raises(PtdistError, match="init (needs|takes no)"):
        PromptInit(**fields)


def test_unknown_model_names_the_fix():
    with pytest.raises(PtdistError, match="could not load model 'no-such/model'.*--model DIR"):
        load_backbone("no-such/model")
    with pytest.raises(PtdistError, match="not a folder with a model"):
        load_backbone("./does/not/exist")


def test_colliding_label_words_are_refused():
    backbone = load_backbone("tiny-roberta")
    with pytest.raises(PtdistError, match="share a first sub-token"):
        backbone.label_token_ids(["good", "good"])


def test_missing_weights_are_initialised_the_same_in_every_process(tmp_path):
    """A checkpoint without some encoder weights gets them randomly initialised; every rank,
    run and `ptdist eval` must get the same frozen tensors. (A checkpoint without only its MLM
    head gets its fitted head instead: tests/test_mlm_head.py.)"""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "incomplete"
    shutil.copytree(preset_dir("tiny-roberta"), folder)
    weights = load_file(folder / "model.safetensors")
    lacking = "roberta.encoder.layer.1.output.dense.weight"
    save_file({k: v for k, v in weights.items() if k != lacking},
              folder / "model.safetensors", metadata={"format": "pt"})
    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        model = load_backbone(str(folder)).model
        assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
        heads.append(dict(model.named_parameters())[lacking].detach().clone())
        assert not torch.equal(heads[-1], weights[lacking])
    assert torch.equal(heads[0], heads[1])
