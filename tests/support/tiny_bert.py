"""A tiny random BERT saved as a Hugging Face folder, for offline text tests."""

from pathlib import Path


def make_bert_folder(root: Path, words: list[str]) -> str:
    """Tokenizer over ``words`` (plus BERT's special tokens) and a seeded 2-layer, 32-wide BERT."""
    import torch
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    conf = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(conf).save_pretrained(root)
    return str(root)
