"""A tiny random BERT saved as a Hugging Face folder, and tiny SST-2 files, for offline text tests."""

from pathlib import Path


def make_bert_folder(root: Path, words: list[str]) -> str:
    """Tokenizer over ``words`` (plus BERT's special tokens) and a seeded 2-layer, 32-wide BERT."""
    import torch
    import transformers

    Path(root).mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    conf = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(conf).save_pretrained(root)
    return str(root)


#: the vocabulary of ``sst2_folder``'s sentences
WORDS = "good bad great awful fine movie film plot acting boring fun dull sad happy".split()


def sst2_folder(root: Path, n_train: int = 60, n_dev: int = 20) -> str:
    """SST-2-format TSVs (header `sentence<TAB>label`) with an easy positive/negative vocabulary."""
    pos, neg = ["good", "great", "fine", "fun", "happy"], ["bad", "awful", "boring", "dull", "sad"]

    def rows(n: int) -> str:
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = [(pos if label else neg)[(i * 7 + j) % 5] for j in range(1 + i % 3)] + ["movie"]
            lines.append(" ".join(words) + f"\t{label}")
        return "\n".join(lines) + "\n"

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.tsv").write_text(rows(n_train))
    (root / "dev.tsv").write_text(rows(n_dev))
    return str(root)


def fake_text_setup(cfg, tmp_path: Path) -> list[tuple[str, object]]:
    """Overrides that point a text example config at a tiny model and tiny data."""
    if cfg["dataset"] != "sst2":
        raise ValueError("only sst2 examples are exercised in tests")
    return [
        ("data.dir", sst2_folder(tmp_path / "sst2")),
        ("model.pretrained", make_bert_folder(tmp_path / "bert", WORDS)),
        ("clients", 2),
        ("partition.name", "iid"),
    ]
