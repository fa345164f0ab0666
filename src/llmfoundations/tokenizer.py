"""Byte-level byte-pair encoding (BPE): train a vocabulary, encode, decode.

A language model reads integers, so text is cut into *tokens* from a fixed vocabulary.
Byte-level BPE (GPT-2, Radford et al., 2019; BPE for subwords: Sennrich et al., 2016,
https://arxiv.org/abs/1508.07909) starts from the 256 possible bytes, so every string
has an encoding and nothing is ever "unknown", then learns *merges*: training repeatedly
finds the most frequent adjacent pair of tokens in the corpus and adds their
concatenation to the vocabulary. Encoding replays the merges in the order they were
learned (lowest rank first).

Steps, as in GPT-2:

1. Special tokens (``"<|endoftext|>"``) are cut out of the text first; they are never
   split and never merged with their neighbours.
2. Pre-tokenization: a regular expression splits the rest into chunks ("words": a letter
   run with its leading space, a digit run, punctuation, whitespace). Merges never cross
   a chunk boundary. ``GPT2_PATTERN`` is the default; ``CL100K_PATTERN`` (GPT-4) is an
   alternative, and any pattern for the ``regex`` module can be given.
3. Each chunk's UTF-8 bytes are merged by rank into token ids.

``BPETokenizer.train`` keeps pair counts up to date incrementally (only the words that
contain the merged pair are touched) and picks the next pair from a heap;
``BPETokenizer.train_naive`` is the readable reference that recounts every pair before
every merge. Both return the same merges.

Left out: normalization (NFC, lower-casing), BPE dropout, SentencePiece-style
tokenizers that work on characters with byte fallback (Llama 1/2, Gemma), unknown
tokens, offsets back into the text, and a fast encoder (this one is plain Python, with a
cache of encoded chunks). Pre-tokenization is a single regex: a chain of pre-tokenizers
(Hugging Face's ``Sequence``, such as SmolLM2's digit splitting before the GPT-2 regex)
has to be written as one pattern.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import regex

from llmfoundations._validate import check_choice

__all__ = ["BPETokenizer", "TokenizerLike", "GPT2_PATTERN", "CL100K_PATTERN", "bytes_to_unicode"]

class TokenizerLike(Protocol):
    """What the text-in, text-out helpers need from a tokenizer (``BPETokenizer`` and
    SmolLM2's tokenizer from ``llmfoundations.pretrained`` both fit)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


#: GPT-2's pre-tokenization regex: English contractions, letter runs, digit runs and
#: punctuation runs (each with at most one leading space), then whitespace. The same
#: expression is used by Hugging Face ``tokenizers``' ``ByteLevel`` pre-tokenizer.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: GPT-4's (``cl100k_base``) pattern: case-insensitive contractions, numbers cut into
#: groups of at most three digits, and newlines kept apart from other punctuation.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

_FORMAT = "llmfoundations.BPETokenizer"
_CACHE_LIMIT = 50_000  # encoded chunks kept; the cache is simply cleared when full


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to one printable Unicode character.

    Vocabulary files of byte-level BPE (``vocab.json``, ``merges.txt``, Hugging Face
    ``tokenizer.json``) store tokens as text, so each byte is shown as a visible
    character: the printable Latin-1 bytes stand for themselves and the other 68 bytes
    (controls, space, ...) are moved to code points 256, 257, ... in byte order. That is
    why a leading space shows up as ``"Ġ"`` (byte 32 -> chr(288)).

    >>> bytes_to_unicode()[ord("a")], bytes_to_unicode()[ord(" ")]
    ('a', 'Ġ')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


# ------------------------------------------------------------------------------ helpers


def _check_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _compile(pattern: str | None) -> regex.Pattern:
    if pattern is None:
        pattern = GPT2_PATTERN
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str (a regular expression), got {type(pattern)}")
    if not pattern:
        raise ValueError("pattern must not be empty")
    try:
        return regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"pattern is not a valid regular expression: {err}") from None


def _special_splitter(specials: Iterable[str]) -> regex.Pattern | None:
    """A regex that captures any special token, longest first (so nested ones match whole)."""
    specials = sorted(specials, key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def _merge_pair(word: Sequence[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``(a, b)`` (left to right) by ``new_id``."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _descending_key(token: bytes) -> str:
    """A string whose ordering is the *reverse* of the bytes' lexicographic ordering.

    Byte ``v`` becomes ``chr(256 - v)`` and a terminator ``chr(257)`` (larger than any
    byte's image) ends the string, so a proper prefix sorts *after* its extensions.
    Python's min-heap then pops the lexicographically greatest pair first among ties.
    """
    return "".join(chr(256 - v) for v in token) + chr(257)


class _Corpus:
    """The training text as unique pre-tokenized words (byte ids) with frequencies."""

    def __init__(self, text: str, pattern: regex.Pattern, specials: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        splitter = _special_splitter(specials)
        parts = splitter.split(text)[::2] if splitter else [text]  # drop the specials
        for part in parts:
            counts.update(pattern.findall(part))
        self.words: list[list[int]] = [list(w.encode("utf-8")) for w in counts]
        self.freqs: list[int] = list(counts.values())


# ---------------------------------------------------------------------------- tokenizer


class BPETokenizer:
    """A byte-level BPE tokenizer: a vocabulary of byte strings, ranked merges, specials.

    Args:
        vocab: token id -> the bytes it stands for. Must contain all 256 single bytes
            (any ids) and the concatenation of every merge. Byte strings must be unique.
        merges: pairs of byte strings, in rank order (first = merged first). The merge
            ``(left, right)`` produces the token ``left + right``.
        special_tokens: strings that are matched verbatim in the text and get one id each.
            A list gets ids after the vocabulary (``max id + 1``, ...); a dict gives them.
            A special id may also be in ``vocab`` if it maps to the string's UTF-8 bytes.
        pattern: the pre-tokenization regex (``regex`` syntax); default ``GPT2_PATTERN``.

    ``train`` learns a vocabulary from text. ``encode``/``decode`` convert; ``tokenize``
    shows the pieces. ``save``/``load`` use a JSON file.

    >>> tok = BPETokenizer.train("low lower lowest " * 20, vocab_size=262)
    >>> tok.tokenize(" lowest lower")
    [b' lowest', b' lowe', b'r']
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | dict[str, int] = (),
        pattern: str | None = None,
    ) -> None:
        self.vocab: dict[int, bytes] = _check_vocab(vocab)
        self._bytes_to_id = {token: i for i, token in self.vocab.items()}
        self.merges: list[tuple[bytes, bytes]] = _check_merges(merges, self._bytes_to_id)
        # (left id, right id) -> (rank, merged id)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            pair = (self._bytes_to_id[left], self._bytes_to_id[right])
            self._ranks.setdefault(pair, (rank, self._bytes_to_id[left + right]))
        self._byte_ids = [self._bytes_to_id[bytes([b])] for b in range(256)]
        self.special_tokens: dict[str, int] = _check_specials(special_tokens, self.vocab)
        self._special_bytes = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self.pattern: str = pattern if pattern is not None else GPT2_PATTERN
        self._regex = _compile(self.pattern)
        self._special_regex = _special_splitter(self.special_tokens)
        self._cache: dict[str, list[int]] = {}
        #: counts of the merged pairs at training time (``train`` only, else ``None``)
        self.merge_counts: list[int] | None = None

    # ----------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """``max id + 1`` over tokens and specials: the rows an embedding table needs.

        After ``train`` the ids are contiguous, so it is also the number of tokens.
        """
        return max([*self.vocab, *self.special_tokens.values()]) + 1

    def token_to_id(self, token: bytes | str) -> int:
        """The id of a token given as bytes, or as a string (a special token or UTF-8)."""
        if isinstance(token, str):
            if token in self.special_tokens:
                return self.special_tokens[token]
            token = token.encode("utf-8")
        if not isinstance(token, bytes):
            raise TypeError(f"token must be bytes or str, got {type(token).__name__}")
        if token not in self._bytes_to_id:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return self._bytes_to_id[token]

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of a token id (a special token's UTF-8 bytes for a special id)."""
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TypeError(f"token_id must be an int, got {type(token_id).__name__}")
        if token_id in self._special_bytes:
            return self._special_bytes[token_id]
        if token_id not in self.vocab:
            raise ValueError(f"token_id {token_id} is not in the vocabulary")
        return self.vocab[token_id]

    # -------------------------------------------------------------------- encode/decode

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Merge one pre-tokenized chunk: apply the lowest-ranked merge present, repeat."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = [self._byte_ids[b] for b in chunk.encode("utf-8")]
        ranks = self._ranks
        while len(ids) >= 2:
            best = min(pairwise(ids), key=lambda p: ranks.get(p, (float("inf"),))[0])
            if best not in ranks:
                break
            ids = _merge_pair(ids, best[0], best[1], ranks[best][1])
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` ignoring special tokens (``"<|endoftext|>"`` becomes plain text)."""
        _check_text("text", text)
        ids: list[int] = []
        for chunk in self._regex.findall(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Encode ``text`` into token ids.

        Special tokens in ``allowed_special`` (``"all"`` by default, ``"none"``, or a
        collection of strings) are recognised in the text and get their single id; any
        other special string is encoded as ordinary text.

        >>> tok = BPETokenizer.train("ab ab", vocab_size=258, special_tokens=["<eos>"])
        >>> tok.encode("ab<eos>")
        [256, 257]
        """
        _check_text("text", text)
        allowed = self._allowed(allowed_special)
        return self._encode_allowed(text, allowed, self._splitter(allowed))

    def encode_iterable(
        self, texts: Iterable[str], allowed_special: str | Iterable[str] = "all"
    ) -> Iterator[int]:
        """Encode a stream of strings lazily, yielding ids: for corpora larger than memory.

        ``texts`` is any iterable of strings, such as a file opened for reading (lines).
        The ids are exactly ``encode("".join(texts))``: a pre-tokenization chunk, or a
        special token, that runs across two strings is held back until it is complete
        (the last chunk of the text seen so far could still grow). Memory stays bounded
        by the longest chunk, not the corpus.

        >>> tok = BPETokenizer.train("ab ab", vocab_size=258, special_tokens=["<eos>"])
        >>> list(tok.encode_iterable(["ab a", "b<e", "os>"]))
        [256, 32, 256, 257]
        """
        allowed = self._allowed(allowed_special)
        splitter = self._splitter(allowed)
        buffer = ""
        for text in texts:
            buffer += _check_text("an item of texts", text)
            cut = self._safe_cut(buffer, allowed, splitter)
            if cut:
                yield from self._encode_allowed(buffer[:cut], allowed, splitter)
                buffer = buffer[cut:]
        if buffer:
            yield from self._encode_allowed(buffer, allowed, splitter)

    def _allowed(self, allowed_special: str | Iterable[str]) -> set[str]:
        """The special tokens to recognise, from ``"all"``, ``"none"`` or a collection."""
        if isinstance(allowed_special, str):
            check_choice("allowed_special", allowed_special, ("all", "none"))
            return set(self.special_tokens) if allowed_special == "all" else set()
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special: {sorted(unknown)} are not special tokens")
        return allowed

    def _splitter(self, allowed: set[str]) -> regex.Pattern | None:
        if not allowed:
            return None
        return self._special_regex if allowed == set(self.special_tokens) else _special_splitter(allowed)

    def _encode_allowed(
        self, text: str, allowed: set[str], splitter: regex.Pattern | None
    ) -> list[int]:
        """Encode ``text`` recognising the ``allowed`` special tokens (already checked)."""
        if splitter is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(splitter.split(text)):  # odd positions are the specials
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def _safe_cut(self, text: str, allowed: set[str], splitter: regex.Pattern | None) -> int:
        """How much of ``text`` encodes the same whatever text follows it.

        Everything before the last pre-tokenization chunk, and before any ending that
        could be the start of a special token.
        """
        hold = len(text)
        longest = max((len(s) for s in allowed), default=0)
        for k in range(min(len(text), longest - 1), 0, -1):  # a special token cut in two?
            if any(s.startswith(text[-k:]) for s in allowed):
                hold = len(text) - k
                break
        head = text[:hold]
        start = 0  # where the last stretch of ordinary text begins
        if splitter is not None:
            for match in splitter.finditer(head):
                start = match.end()
        last_start = hold  # no chunk at all: everything up to the held-back part is final
        for match in self._regex.finditer(head, pos=start):
            last_start = match.start()
        return last_start

    def decode(self, ids: Iterable[int]) -> str:
        """Join the tokens' bytes and decode them as UTF-8.

        A sequence of ids may end in the middle of a multi-byte character (when a model
        generates one token at a time, or a slice cuts it): invalid UTF-8 is replaced by
        U+FFFD (``errors="replace"``) rather than raising. Unknown ids raise ValueError.
        Accepts a list of ints or anything with ``.tolist()`` (a 1-D tensor or array).
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (lossless, no UTF-8 decoding)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be an iterable of ints, got {type(ids).__name__}")
        pieces = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"ids must hold ints, got {type(i).__name__} ({i!r})")
            piece = self.vocab.get(i)
            if piece is None:
                piece = self._special_bytes.get(i)
                if piece is None:
                    raise ValueError(f"ids: {i} is not a token id of this tokenizer")
            pieces.append(piece)
        return b"".join(pieces)

    def tokenize(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[bytes]:
        """The pieces ``encode`` produces, as byte strings (for looking at tokenizations).

        >>> BPETokenizer.train("hello hello", vocab_size=259).tokenize("hello!")
        [b'he', b'llo', b'!']
        """
        return [self.id_to_token(i) for i in self.encode(text, allowed_special)]

    # ------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        pattern: str | None = None,
        verbose: bool = False,
    ) -> BPETokenizer:
        """Learn a vocabulary of ``vocab_size`` tokens from ``text``.

        The vocabulary starts as the 256 bytes (id ``b`` is byte ``b``); each merge then
        adds one token with the next id; the special tokens come last. So
        ``vocab_size - 256 - len(special_tokens)`` merges are learned, fewer if the
        corpus runs out of pairs (every word already a single token).

        The merged pair is the most frequent adjacent pair over all pre-tokenized words;
        ties go to the lexicographically greatest ``(left bytes, right bytes)``, which
        makes training deterministic. If a merge produces bytes that already are a
        token (``ab + c`` after ``a + bc``), the existing id is reused: the merge is
        recorded but adds no token, and training goes on until the size is reached.

        Pair counts are kept incrementally: a merge only revisits the words that
        contain the merged pair (``where``) and adjusts the counts of the pairs that
        changed there. The best pair comes from a max-heap with lazy deletion: every
        count change pushes a fresh entry, and a popped entry whose count is no longer
        current is discarded. ``verbose`` prints each merge.
        """
        words, freqs, vocab, specials, n_merges = _prepare_training(
            text, vocab_size, special_tokens, pattern
        )
        token_of = {token: i for i, token in vocab.items()}
        keys = [_descending_key(vocab[i]) for i in range(256)]  # heap tie-break, per id

        counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted count
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> word indices
        for index, (word, freq) in enumerate(zip(words, freqs, strict=True)):
            for pair in pairwise(word):
                counts[pair] += freq
                where[pair].add(index)
        heap = [(-c, keys[a], keys[b], (a, b)) for (a, b), c in counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[bytes, bytes]] = []
        merge_counts: list[int] = []
        while len(vocab) < 256 + n_merges and heap:
            neg_count, _, _, pair = heapq.heappop(heap)
            if counts.get(pair, 0) != -neg_count:
                continue  # stale: the count changed after this entry was pushed
            a, b = pair
            new_bytes = vocab[a] + vocab[b]
            new_id = token_of.get(new_bytes)
            if new_id is None:
                new_id = len(vocab)
                vocab[new_id] = new_bytes
                token_of[new_bytes] = new_id
                keys.append(_descending_key(new_bytes))
            merges.append((vocab[a], vocab[b]))
            merge_counts.append(-neg_count)
            if verbose:
                print(f"merge {len(merges)}: {vocab[a]!r} + {vocab[b]!r} (count {-neg_count})")

            delta: dict[tuple[int, int], int] = defaultdict(int)
            for index in where.pop(pair):
                word, freq = words[index], freqs[index]
                new_word = _merge_pair(word, a, b, new_id)
                old_pairs = list(pairwise(word))
                new_pairs = list(pairwise(new_word))
                for p in old_pairs:
                    delta[p] -= freq
                for p in new_pairs:
                    delta[p] += freq
                kept = set(new_pairs)
                for p in old_pairs:
                    if p not in kept and p != pair:
                        where[p].discard(index)
                for p in kept:
                    where[p].add(index)
                words[index] = new_word
            for p, change in delta.items():
                if change == 0:
                    continue
                count = counts[p] + change
                if count > 0:
                    counts[p] = count
                    heapq.heappush(heap, (-count, keys[p[0]], keys[p[1]], p))
                else:
                    del counts[p]
                    where.pop(p, None)

        tokenizer = cls(vocab, merges, _special_ids(specials, len(vocab)), pattern)
        tokenizer.merge_counts = merge_counts
        return tokenizer

    @classmethod
    def train_naive(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        pattern: str | None = None,
    ) -> BPETokenizer:
        """Reference trainer: recount every pair before every merge. Same result as ``train``.

        Quadratic in practice (merges x corpus), fine for a few kilobytes of text.
        """
        words, freqs, vocab, specials, n_merges = _prepare_training(
            text, vocab_size, special_tokens, pattern
        )
        token_of = {token: i for i, token in vocab.items()}
        merges: list[tuple[bytes, bytes]] = []
        merge_counts: list[int] = []
        while len(vocab) < 256 + n_merges:
            counts: Counter[tuple[int, int]] = Counter()
            for word, freq in zip(words, freqs, strict=True):
                for pair in pairwise(word):
                    counts[pair] += freq
            if not counts:
                break
            # most frequent pair; ties -> greatest (left bytes, right bytes)
            a, b = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
            new_bytes = vocab[a] + vocab[b]
            new_id = token_of.setdefault(new_bytes, len(vocab))
            vocab[new_id] = new_bytes
            merges.append((vocab[a], vocab[b]))
            merge_counts.append(counts[(a, b)])
            words = [_merge_pair(word, a, b, new_id) for word in words]
        tokenizer = cls(vocab, merges, _special_ids(specials, len(vocab)), pattern)
        tokenizer.merge_counts = merge_counts
        return tokenizer

    # ---------------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to a JSON file.

        Byte strings are stored as hexadecimal (``b" the"`` -> ``"20746865"``): exact for
        any bytes, including ones that are not valid UTF-8 on their own. Keys:
        ``format``, ``version``, ``pattern``, ``vocab`` (id -> hex), ``merges``
        (pairs of hex), ``special_tokens`` (string -> id).
        """
        payload = {
            "format": _FORMAT,
            "version": 1,
            "pattern": self.pattern,
            "vocab": {str(i): token.hex() for i, token in sorted(self.vocab.items())},
            "merges": [[left.hex(), right.hex()] for left, right in self.merges],
            "special_tokens": dict(self.special_tokens),
        }
        Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by ``save``."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"path: {path} is not a file written by BPETokenizer.save")
        if payload.get("version") != 1:
            raise ValueError(f"path: unsupported version {payload.get('version')!r}")
        vocab = {int(i): bytes.fromhex(h) for i, h in payload["vocab"].items()}
        merges = [(bytes.fromhex(left), bytes.fromhex(right)) for left, right in payload["merges"]]
        return cls(vocab, merges, payload["special_tokens"], payload["pattern"])

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )


# --------------------------------------------------------------------------- validation


def _check_vocab(vocab: object) -> dict[int, bytes]:
    if not isinstance(vocab, dict):
        raise TypeError(f"vocab must be a dict of id -> bytes, got {type(vocab).__name__}")
    seen: dict[bytes, int] = {}
    for i, token in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"vocab: ids must be non-negative ints, got {i!r}")
        if not isinstance(token, bytes) or not token:
            raise ValueError(f"vocab: token {i} must be non-empty bytes, got {token!r}")
        if token in seen:
            raise ValueError(f"vocab: ids {seen[token]} and {i} are both {token!r}")
        seen[token] = i
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise ValueError(
            f"vocab: a byte-level vocabulary needs all 256 single bytes; {len(missing)} are "
            f"missing (first: {bytes([missing[0]])!r})"
        )
    return dict(vocab)


def _check_merges(merges: object, bytes_to_id: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    if isinstance(merges, (str, bytes)) or not isinstance(merges, Sequence):
        raise TypeError(f"merges must be a list of (bytes, bytes), got {type(merges).__name__}")
    out = []
    for rank, merge in enumerate(merges):
        if not (
            isinstance(merge, (tuple, list))
            and len(merge) == 2
            and all(isinstance(part, bytes) for part in merge)
        ):
            raise TypeError(f"merges[{rank}] must be a pair of bytes, got {merge!r}")
        left, right = merge
        for token in (left, right, left + right):
            if token not in bytes_to_id:
                raise ValueError(f"merges[{rank}] = {merge!r}: {token!r} is not in vocab")
        out.append((left, right))
    return out


def _check_specials(specials: object, vocab: dict[int, bytes]) -> dict[str, int]:
    if isinstance(specials, str):
        raise TypeError("special_tokens must be a list or dict of strings, got a single str")
    if isinstance(specials, dict):
        mapping = dict(specials)
    elif isinstance(specials, Iterable):
        names = list(specials)
        mapping = _special_ids(names, max(vocab) + 1)
    else:
        raise TypeError(f"special_tokens must be a list or dict, got {type(specials).__name__}")
    ids_seen: dict[int, str] = {}
    for name, i in mapping.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"special_tokens: names must be non-empty str, got {name!r}")
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"special_tokens: id of {name!r} must be an int >= 0, got {i!r}")
        if i in ids_seen:
            raise ValueError(f"special_tokens: {ids_seen[i]!r} and {name!r} share id {i}")
        if i in vocab and vocab[i] != name.encode("utf-8"):
            raise ValueError(
                f"special_tokens: id {i} of {name!r} is already the token {vocab[i]!r} in vocab"
            )
        ids_seen[i] = name
    return mapping


def _special_ids(names: list[str], first_id: int) -> dict[str, int]:
    if len(set(names)) != len(names):
        raise ValueError(f"special_tokens: duplicates in {names!r}")
    return {name: first_id + k for k, name in enumerate(names)}


def _prepare_training(
    text: str, vocab_size: int, special_tokens: Iterable[str], pattern: str | None
) -> tuple[list[list[int]], list[int], dict[int, bytes], list[str], int]:
    """Shared checks and set-up of both trainers."""
    _check_text("text", text)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if isinstance(special_tokens, (str, dict)):
        raise TypeError("special_tokens must be a list of strings for training")
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special_tokens: must be non-empty strings, got {s!r}")
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size must be at least 256 (the bytes) + {len(specials)} (special tokens) "
            f"= {256 + len(specials)}, got {vocab_size}"
        )
    corpus = _Corpus(text, _compile(pattern), specials)
    vocab = {b: bytes([b]) for b in range(256)}
    return corpus.words, corpus.freqs, vocab, specials, vocab_size - 256 - len(specials)
