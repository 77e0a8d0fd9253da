"""Reference outputs of the tiny BERT that tests/bert.rs builds: 2 layers, hidden 32, 4 heads,
intermediate 64, a 26-token WordPiece vocabulary. Every weight is a fixed formula of its name
and position (the same in tests/bert.rs), so no file needs committing:

    value[i] = 0.1 * sin(0.37 * i + 0.11 * (sum of the name's bytes % 97))
    LayerNorm weights: 1 + that

Run with PyTorch and transformers (bench/setup_reference.sh):
    .venv/bin/python bench/reference/tiny_bert.py
It prints the mean-pooled, L2-normalised sentence embeddings (sentence-transformers' pooling)
of the test's texts; tests/bert.rs holds the printed values.
"""
import math
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a",
         "dog", "ran", "free", "money", "now", "click", "here", "meeting", "at", "noon", "##s",
         "##ing", "win", "prize", "."]
TEXTS = ["The cats sat on the mat.", "Win free money now, click here!", "a dog"]


def value(name, i):
    h = sum(name.encode()) % 97
    v = 0.1 * math.sin(0.37 * i + 0.11 * h)
    return 1.0 + v if "LayerNorm.weight" in name else v


def main():
    torch.set_default_dtype(torch.float64)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                     type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=False).eval()
    sd = model.state_dict()
    for name, t in sd.items():
        if "position_ids" in name or "token_type_ids" in name:
            continue
        flat = torch.tensor([value(name, i) for i in range(t.numel())]).reshape(t.shape)
        t.copy_(flat)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    enc = [tok.encode(t).ids for t in TEXTS]
    n = max(len(e) for e in enc)
    ids = torch.tensor([e + [0] * (n - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    with torch.inference_mode():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).double()
        e = (h * m).sum(1) / m.sum(1)
        e = torch.nn.functional.normalize(e, dim=-1)
    for t, ids_, row in zip(TEXTS, enc, e):
        print(t, ids_)
        print("[" + ", ".join(f"{v:.7f}" for v in row[:8].tolist()) + "]")


if __name__ == "__main__":
    main()
