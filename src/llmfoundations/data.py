"""Seeded synthetic corpora and tasks that small models learn on a CPU in minutes.

Every generator is a pure function of its arguments: it draws from its own
``random.Random(seed)`` (never the global state), so the same call returns the same
data on every run and platform, and different seeds give different data.

- ``stories`` / ``story_corpus``: short children's stories from a small grammar
  (characters, places, objects, dialogue, a problem, a "because" and an ending). Enough
  structure for a tiny GPT to pick up sentence shape, pronoun agreement and names that
  recur within a story.
- ``classification``: the same stories labelled by their ending, happy (1) or sad (0).
  The middle of every story has a worried moment, so only the ending decides the label.
- ``translation_pairs`` / ``translate``: English sentences and their translation into
  *Tovan*, a made-up language with its own words, subject-object-verb order, adjectives
  after the noun, a plural suffix and the place phrase moved to the front.
- ``arithmetic`` / ``arithmetic_text``: addition and subtraction with worked,
  digit-by-digit steps (carries and borrows) for chain-of-thought experiments.
- ``CharTokenizer``, ``batches``, ``sequential_batches``, ``train_val_split``: the small
  plumbing between a text and a language-model training loop.

Left out: real-world text (nothing here downloads anything), instruction and preference
data sets (those live with the chapters that use them), and streaming data loaders: the
corpora are small enough to sit in memory as one tensor.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from llmfoundations._validate import check_choice, check_int, check_tensor

__all__ = [
    "stories",
    "story_corpus",
    "classification",
    "CLASSIFICATION_LABELS",
    "HAPPY_WORDS",
    "SAD_WORDS",
    "translation_pairs",
    "translate",
    "TOVAN_WORDS",
    "arithmetic",
    "arithmetic_text",
    "CharTokenizer",
    "batches",
    "sequential_batches",
    "train_val_split",
]

Item = TypeVar("Item")



def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


# ------------------------------------------------------------------------------ stories

_NAMES = (
    "Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam", "Ella", "Jack",
    "Nora", "Finn", "Ruby", "Omar", "Ivy", "Kai", "Lena", "Theo", "Maya", "Noah", "Rosa",
    "Eli", "Ada", "Hugo", "Iris", "Milo", "Tara", "Otto",
)  # fmt: skip
# Made-up names (two or three syllables) give the corpus a long tail of rare words, as
# real text has: a BPE tokenizer learns their syllables, a small LM learns to copy them.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "l", "r", "s")
# (kind, pronoun or None for "either")
_KINDS = (
    ("girl", "she"), ("boy", "he"), ("cat", None), ("dog", None), ("fox", None),
    ("rabbit", None), ("bear", None), ("owl", None), ("mouse", None), ("duck", None),
    ("turtle", None), ("robot", None), ("dragon", None), ("frog", None), ("bird", None),
)  # fmt: skip
_TRAITS = ("little", "brave", "shy", "curious", "kind", "clever", "sleepy", "tiny", "young",
           "funny", "quiet", "busy")  # fmt: skip
_PLACES = ("forest", "park", "garden", "river", "beach", "village", "old castle", "school",
           "farm", "hill", "lake", "market", "library", "meadow", "cave", "harbor")  # fmt: skip
_OBJECTS = ("ball", "kite", "hat", "book", "boat", "key", "lamp", "map", "shell", "drum",
            "cup", "box", "flower", "star", "coin", "scarf", "bell", "jar")  # fmt: skip
_COLORS = ("red", "blue", "green", "yellow", "shiny", "small", "big", "old", "new", "golden",
           "striped", "purple")  # fmt: skip
_ACTIVITIES = ("play with a ball", "read books", "climb trees", "sing songs",
               "paint pictures", "build towers", "dance", "swim", "run in the grass",
               "bake cookies", "look at the stars", "fly kites", "collect stones",
               "tell jokes")  # fmt: skip
_TIMES = ("morning", "afternoon", "evening", "sunny day", "rainy day", "windy day")
_HIDING = ("a bush", "the bed", "a big rock", "the table", "a pile of leaves", "the stairs",
           "an old tree", "the bridge")  # fmt: skip
_GREETINGS = ("Hello", "Hi", "Good morning", "Hey")
#: Feeling words that only ever appear in happy / sad *endings* (the classification label).
HAPPY_WORDS = ("happy", "glad", "proud", "cheerful", "joyful")
SAD_WORDS = ("sad", "unhappy", "gloomy", "heartbroken", "miserable")
#: Label names for ``classification``: index 0 is a sad ending, 1 a happy one.
CLASSIFICATION_LABELS = ("sad", "happy")
_WORRIED = ("worried", "scared", "nervous", "upset")  # the middle of every story


def _invented_name(rng: random.Random) -> str:
    n_syllables = rng.choice((2, 2, 3))
    name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables))
    return (name + rng.choice(_CODAS)).capitalize()


def _character(rng: random.Random, avoid: str = "") -> dict[str, str]:
    while True:
        name = rng.choice(_NAMES) if rng.random() < 0.7 else _invented_name(rng)
        if name != avoid:
            break
    kind, pronoun = rng.choice(_KINDS)
    pronoun = pronoun or rng.choice(("he", "she"))
    return {
        "name": name,
        "kind": kind,
        "he": pronoun,
        "him": "him" if pronoun == "he" else "her",
        "his": "his" if pronoun == "he" else "her",
        "trait": rng.choice(_TRAITS),
    }


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _story(rng: random.Random, happy: bool) -> str:
    """One story; ``happy`` decides the ending (and only the ending)."""
    a = _character(rng)
    b = _character(rng, avoid=a["name"])
    place = rng.choice(_PLACES)
    thing = f"{rng.choice(_COLORS)} {rng.choice(_OBJECTS)}"
    activity = rng.choice(_ACTIVITIES)
    A, he, him, his = a["name"], a["he"], a["him"], a["his"]
    He = he.capitalize()
    B = b["name"]
    trait_kind = f"{a['trait']} {a['kind']}"

    opening = rng.choice(
        (
            f"Once upon a time, there was {_article(trait_kind)} {trait_kind} named {A}.",
            f"Once upon a time, {_article(trait_kind)} {trait_kind} called {A} lived near "
            f"the {place}.",
            f"One {rng.choice(_TIMES)}, {A} the {a['kind']} went to the {place}.",
            f"There once was {_article(trait_kind)} {trait_kind}. {his.capitalize()} name was {A}.",
        )
    )
    setup = rng.choice(
        (
            f"{A} loved to {activity}.",
            f"{He} had {_article(thing)} {thing} and took it everywhere.",
            f"Every day, {A} wanted to {activity}.",
        )
    )
    meeting = rng.choice(
        (
            f"One day, {A} met {_article(b['kind'])} {b['kind']} named {B} at the {place}.",
            f"At the {place}, {he} saw {B} the {b['kind']}.",
            f"Soon {A} met a friend. It was {B} the {b['kind']}.",
        )
    )
    greeting = rng.choice(_GREETINGS)
    dialogue = rng.choice(
        (
            f'"{greeting}, {B}!" said {A}. "Do you want to {activity} with me?" '
            f'"Yes, I do!" said {B}.',
            f'"{greeting}, {A}," said {B}. "What are you doing?" "I want to {activity}," said {A}.',
            f'{A} waved and said, "{greeting}, {B}! Come and {activity} with me."',
        )
    )
    worried = rng.choice(_WORRIED)
    hiding = rng.choice(_HIDING)
    problem_kind = rng.randrange(3)
    if problem_kind == 0:
        problem = (
            f"Then {A} lost {his} {thing}. {He} was {worried} because it was {his} favorite thing."
        )
        fix = (
            f"{B} helped {him} look, and they found the {thing} under {hiding}."
            if happy
            else f"They looked everywhere, but the {thing} was gone."
        )
    elif problem_kind == 1:
        problem = (
            f"Then dark clouds came and it began to rain. {A} felt {worried} because "
            f"{he} was far from home."
        )
        fix = (
            f"{B} knew a short way, so they walked home together and got warm."
            if happy
            else f"{B} had to leave, and {A} walked home alone in the cold rain."
        )
    else:
        problem = f"Then {A} wanted to climb the hill, but it was very steep. {He} felt {worried}."
        fix = (
            f'{B} said, "You can do it!" and {A} reached the top.'
            if happy
            else f"{A} slipped and fell, and {he} hurt {his} knee."
        )
    feeling = rng.choice(HAPPY_WORDS if happy else SAD_WORDS)
    because = rng.choice(
        (f"{B} was a good friend", "the day had been long", f"of the {thing}")
        if happy
        else (f"{B} was not there", "the day had been long", f"of the {thing}")
    )
    ending = rng.choice(
        (
            f"In the end, {A} felt {feeling} because {because}.",
            f"That night, {A} went to bed and felt {feeling}.",
            f"{A} was {feeling} all evening.",
        )
    )
    return " ".join((opening, setup, meeting, dialogue, problem, fix, ending))


def _iter_stories(seed: int) -> Iterator[tuple[str, bool]]:
    rng = random.Random(seed)
    while True:
        happy = rng.random() < 0.5
        yield _story(rng, happy), happy


def stories(n: int, seed: int = 0) -> list[str]:
    """``n`` short stories from a small grammar (about 450 characters each).

    >>> stories(1, seed=3)[0][:60]
    'There once was a quiet bird. Her name was Jack. Every day, J'
    """
    check_int("n", n, minimum=0)
    it = _iter_stories(_check_seed(seed))
    return [next(it)[0] for _ in range(n)]


def story_corpus(n_chars: int, seed: int = 0) -> str:
    """Exactly ``n_chars`` characters of stories separated by blank lines.

    It is the beginning of ``"\\n\\n".join(stories(many, seed))``: the last story is cut
    where the length is reached.
    """
    check_int("n_chars", n_chars, minimum=0)
    parts: list[str] = []
    length = 0
    for story, _ in _iter_stories(_check_seed(seed)):
        if length >= n_chars:
            break
        parts.append(story)
        length += len(story) + 2
    return "\n\n".join(parts)[:n_chars]


def classification(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` stories labelled by their ending: ``1`` happy, ``0`` sad.

    The label is fixed before the story is written; the ending sentence then carries one
    of ``HAPPY_WORDS`` or ``SAD_WORDS`` (and the outcome of the problem). Both classes share
    the rest of the grammar, including a worried moment in the middle, so a classifier
    has to attend to how the story ends. ``CLASSIFICATION_LABELS[label]`` names a label.
    """
    check_int("n", n, minimum=0)
    it = _iter_stories(_check_seed(seed))
    return [(story, int(happy)) for story, happy in (next(it) for _ in range(n))]


# -------------------------------------------------------------------------- translation

#: English word -> Tovan word. Nouns take the plural suffix "-ek" in Tovan.
TOVAN_WORDS: dict[str, str] = {
    # determiners
    "the": "lo", "a": "un", "my": "mi", "two": "du", "some": "ke",
    # adjectives
    "big": "grom", "small": "pik", "red": "rud", "old": "vel", "happy": "jolu",
    "quick": "rapi", "quiet": "sil", "green": "verd", "tall": "alt", "young": "nov",
    "blue": "blau", "brave": "kur",
    # nouns (singular English form)
    "dog": "vordo", "cat": "miku", "bird": "pilo", "fox": "rasko", "child": "tenu",
    "teacher": "lamo", "farmer": "gorbi", "apple": "zuna", "book": "libo", "ball": "topa",
    "house": "domi", "tree": "arbo", "cake": "keko", "horse": "kavu", "song": "kanto",
    "boat": "navo",
    # verbs (Tovan verbs do not agree with the subject)
    "see": "vidar", "like": "amar", "eat": "mangar", "find": "trovar", "help": "helpar",
    "carry": "portar", "follow": "sekar", "paint": "pintar", "watch": "gardar",
    # prepositions and places
    "in": "en", "near": "pres", "behind": "mal",
    "park": "parko", "garden": "hortu", "forest": "silvo", "river": "riva",
    "kitchen": "kuzi", "school": "skolo",
}  # fmt: skip
_DETS_SINGULAR = ("the", "a", "my")
_DETS_PLURAL = ("the", "my", "two", "some")
_ADJECTIVES = ("big", "small", "red", "old", "happy", "quick", "quiet", "green", "tall",
               "young", "blue", "brave")  # fmt: skip
_ANIMATE = ("dog", "cat", "bird", "fox", "child", "teacher", "farmer", "horse")
_NOUNS = _ANIMATE + ("apple", "book", "ball", "house", "tree", "cake", "song", "boat")
_VERBS = ("see", "like", "eat", "find", "help", "carry", "follow", "paint", "watch")
_PREPOSITIONS = ("in", "near", "behind")
_LOCATIONS = ("park", "garden", "forest", "river", "kitchen", "school")
_PLURAL = {"child": "children", "fox": "foxes"}  # the rest add "s"
_THIRD_PERSON = {"carry": "carries", "watch": "watches"}  # the rest add "s"
_TOVAN_PLURAL = "ek"


def _english_plural(noun: str) -> str:
    return _PLURAL.get(noun, noun + "s")


def _english_verb(verb: str, plural_subject: bool) -> str:
    return verb if plural_subject else _THIRD_PERSON.get(verb, verb + "s")


def _random_np(rng: random.Random, nouns: Sequence[str]) -> dict:
    plural = rng.random() < 0.3
    return {
        "det": rng.choice(_DETS_PLURAL if plural else _DETS_SINGULAR),
        "adjs": [rng.choice(_ADJECTIVES) for _ in range(rng.choice((0, 0, 1, 1, 2)))],
        "noun": rng.choice(nouns),
        "plural": plural,
    }


def _english_np(np: dict) -> list[str]:
    noun = _english_plural(np["noun"]) if np["plural"] else np["noun"]
    det = np["det"]
    if det == "a":  # a / an, decided by the next word
        det = _article(np["adjs"][0] if np["adjs"] else noun)
    return [det, *np["adjs"], noun]


def _tovan_np(np: dict) -> list[str]:
    noun = TOVAN_WORDS[np["noun"]] + (_TOVAN_PLURAL if np["plural"] else "")
    return [TOVAN_WORDS[np["det"]], noun, *(TOVAN_WORDS[a] for a in np["adjs"])]


def _render(sentence: dict) -> tuple[str, str]:
    subj, obj, verb, place = sentence["subj"], sentence["obj"], sentence["verb"], sentence["pp"]
    english = [*_english_np(subj), _english_verb(verb, subj["plural"]), *_english_np(obj)]
    tovan = [*_tovan_np(subj), *_tovan_np(obj), TOVAN_WORDS[verb]]
    if place is not None:
        prep, det, location = place
        english += [prep, det, location]
        tovan = [TOVAN_WORDS[prep], TOVAN_WORDS[det], TOVAN_WORDS[location], *tovan]
    return " ".join(english) + " .", " ".join(tovan) + " ."


def translation_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (English, Tovan) sentence pairs from a small grammar.

    English: ``det adj* noun verb det adj* noun [prep the place] .``
    Tovan reorders and relabels, word by word through ``TOVAN_WORDS``:

    - subject-object-verb order (the verb goes last and never agrees);
    - adjectives follow their noun;
    - plural nouns take the suffix ``-ek`` (English has irregular plurals);
    - a place phrase ("in the park") moves to the front of the sentence.

    Words are lower case and the full stop is a separate word, so a word-level vocabulary
    is enough. ``translate`` maps any sentence of the grammar the same way.

    >>> translation_pairs(1, seed=1)
    [('the small horses paint a fox .', 'lo kavuek pik un rasko pintar .')]
    """
    check_int("n", n, minimum=0)
    rng = random.Random(_check_seed(seed))
    pairs = []
    for _ in range(n):
        sentence = {
            "subj": _random_np(rng, _ANIMATE),
            "verb": rng.choice(_VERBS),
            "obj": _random_np(rng, _NOUNS),
            "pp": (rng.choice(_PREPOSITIONS), "the", rng.choice(_LOCATIONS))
            if rng.random() < 0.35
            else None,
        }
        pairs.append(_render(sentence))
    return pairs


def _parse_np(words: list[str], i: int, sentence: str) -> tuple[dict, int]:
    singular_of = {_english_plural(n): n for n in _NOUNS}
    if i >= len(words) or words[i] not in {*_DETS_SINGULAR, *_DETS_PLURAL, "an"}:
        raise ValueError(f"sentence: expected a determiner at word {i} of {sentence!r}")
    det = "a" if words[i] == "an" else words[i]
    i += 1
    adjs = []
    while i < len(words) and words[i] in _ADJECTIVES:
        adjs.append(words[i])
        i += 1
    if i >= len(words):
        raise ValueError(f"sentence: expected a noun at the end of {sentence!r}")
    word = words[i]
    if word in _NOUNS:
        noun, plural = word, False
    elif word in singular_of:
        noun, plural = singular_of[word], True
    else:
        raise ValueError(f"sentence: unknown noun {word!r} in {sentence!r}")
    return {"det": det, "adjs": adjs, "noun": noun, "plural": plural}, i + 1


def translate(sentence: str) -> str:
    """Translate an English sentence of the ``translation_pairs`` grammar into Tovan.

    Parses the sentence (no randomness) and applies the rules listed in
    ``translation_pairs``. Raises ``ValueError`` for a sentence outside the grammar.

    >>> translate("the big dog sees two small cats in the park .")
    'en lo parko lo vordo grom du mikuek pik vidar .'
    """
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    words = sentence.split()
    if not words or words[-1] != ".":
        raise ValueError(f"sentence: must end with ' .', got {sentence!r}")
    words = words[:-1]
    subj, i = _parse_np(words, 0, sentence)
    forms = {_english_verb(v, p): v for v in _VERBS for p in (False, True)}
    if i >= len(words) or words[i] not in forms:
        raise ValueError(f"sentence: expected a verb at word {i} of {sentence!r}")
    verb = forms[words[i]]
    obj, i = _parse_np(words, i + 1, sentence)
    place = None
    if i < len(words):
        rest = words[i:]
        if (
            len(rest) != 3
            or rest[0] not in _PREPOSITIONS
            or rest[1] != "the"
            or (rest[2] not in _LOCATIONS)
        ):
            raise ValueError(f"sentence: cannot parse {' '.join(rest)!r} in {sentence!r}")
        place = tuple(rest)
    return _render({"subj": subj, "verb": verb, "obj": obj, "pp": place})[1]


# --------------------------------------------------------------------------- arithmetic

_OPS = ("+", "-")


def _add_steps(a: int, b: int) -> str:
    """Column addition from the rightmost digit: '7+5=12, write 2 carry 1; ...'."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = total // 10
        steps.append(f"{expr}={total}, write {total % 10}" + (" carry 1" if carry else ""))
    if carry:
        steps.append("write 1")
    return "; ".join(steps)


def _subtract_steps(a: int, b: int) -> str:
    """Column subtraction (a >= b) from the rightmost digit, with borrows."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, borrow = [], 0
    for i in range(len(da)):
        x = int(da[i])
        y = int(db[i]) if i < len(db) else 0
        expr = f"{y}" + (f"-{borrow}" if borrow else "")
        if x - y - borrow < 0:
            digit = x + 10 - y - borrow
            steps.append(f"{x}-{expr} borrow, {x + 10}-{expr}={digit}, write {digit} borrow 1")
            borrow = 1
        else:
            digit = x - y - borrow
            steps.append(f"{x}-{expr}={digit}, write {digit}")
            borrow = 0
    return "; ".join(steps)


def arithmetic(
    n: int,
    n_digits: tuple[int, int] = (1, 3),
    ops: Sequence[str] = ("+", "-"),
    worked: bool = True,
    seed: int = 0,
) -> list[dict]:
    """``n`` addition / subtraction problems with worked digit-by-digit steps.

    Each operand gets a digit count drawn uniformly from ``n_digits`` (inclusive) and
    then a uniform number with exactly that many digits. Subtraction puts the larger
    operand first, so answers are never negative. Each item is a dict with
    ``question`` (``"47+85"``), ``answer`` (``"132"``), ``steps`` (``None`` unless
    ``worked``), and ``a``, ``b``, ``op``. The steps write the answer's digits from the
    right, one column per step, e.g. ``"7+5=12, write 2 carry 1; 4+8+1=13, write 3
    carry 1; write 1"``; subtraction steps say where they borrow.
    ``arithmetic_text`` formats an item as training text.

    >>> [item["question"] for item in arithmetic(3, seed=0)]
    ['75-15', '55-48', '242+27']
    """
    check_int("n", n, minimum=0)
    if (
        not isinstance(n_digits, (tuple, list))
        or len(n_digits) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in n_digits)
    ):
        raise TypeError(f"n_digits must be a (low, high) pair of ints, got {n_digits!r}")
    low, high = n_digits
    if not 1 <= low <= high:
        raise ValueError(f"n_digits must satisfy 1 <= low <= high, got {n_digits!r}")
    if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
        raise ValueError(f"ops must be a non-empty sequence such as ('+', '-'), got {ops!r}")
    for op in ops:
        check_choice("ops", op, _OPS)
    rng = random.Random(_check_seed(seed))

    def number() -> int:
        digits = rng.randint(low, high)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    items = []
    for _ in range(n):
        op = rng.choice(tuple(ops))
        a, b = number(), number()
        if op == "-" and a < b:
            a, b = b, a
        value = a + b if op == "+" else a - b
        steps = None
        if worked:
            steps = _add_steps(a, b) if op == "+" else _subtract_steps(a, b)
        items.append(
            {"question": f"{a}{op}{b}", "answer": str(value), "steps": steps,
             "a": a, "b": b, "op": op}
        )  # fmt: skip
    return items


def arithmetic_text(item: dict, with_steps: bool = True) -> str:
    """Format an ``arithmetic`` item as one line of training text.

    Without steps: ``"47+85=132"``. With steps the column work comes first and the line
    ends the same way, so the answer is always what follows the last ``=``:
    ``"47+85: 7+5=12, write 2 carry 1; 4+8+1=13, write 3 carry 1; write 1. 47+85=132"``.
    """
    if not isinstance(item, dict) or not {"question", "answer", "steps"} <= item.keys():
        raise TypeError("item must be a dict from arithmetic() with question, answer, steps")
    plain = f"{item['question']}={item['answer']}"
    if not with_steps:
        return plain
    if item["steps"] is None:
        raise ValueError("item: has no steps; generate it with arithmetic(..., worked=True)")
    return f"{item['question']}: {item['steps']}. {plain}"


# ----------------------------------------------------------------------------- plumbing


class CharTokenizer:
    """One token per character, for quick experiments before BPE.

    The vocabulary is the sorted set of characters of ``text``; ids follow that order.

    >>> tok = CharTokenizer("hello")
    >>> tok.chars, tok.encode("hole"), tok.decode([3, 2])
    (['e', 'h', 'l', 'o'], [1, 3, 2, 0], 'ol')
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text must not be empty")
        self.chars: list[str] = sorted(set(text))
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"text contains {err.args[0]!r}, which is not in the vocabulary"
            ) from None

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            check_tensor("ids", ids, ndim=1)
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.chars):
                raise ValueError(f"ids: {i!r} is not a token id in [0, {len(self.chars)})")
            out.append(self.chars[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _as_token_tensor(token_ids: Sequence[int] | Tensor) -> Tensor:
    if isinstance(token_ids, Tensor):
        check_tensor("token_ids", token_ids, ndim=1)
        if token_ids.is_floating_point() or token_ids.is_complex():
            raise TypeError(f"token_ids must hold integers, got dtype {token_ids.dtype}")
        return token_ids.long()
    if isinstance(token_ids, (str, bytes)):
        raise TypeError("token_ids must be a sequence of ints or a 1-D tensor, got a string")
    return torch.tensor(list(token_ids), dtype=torch.long)


def batches(
    token_ids: Sequence[int] | Tensor,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    *,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Random training windows for next-token prediction: yields ``(x, y)``, both (B, T).

    Each row is a window of ``seq_len + 1`` consecutive tokens starting at a uniformly
    random offset; ``x`` is its first ``seq_len`` tokens and ``y`` the same window shifted
    by one (``y[:, t] == x[:, t + 1]``). Runs forever unless ``num_batches`` is given.
    Offsets come from a private ``torch.Generator`` seeded with ``seed``.

    >>> x, y = next(batches(list(range(10)), batch_size=2, seq_len=4, seed=0))
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([2, 4]), True)
    """
    data = _as_token_tensor(token_ids)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seq_len", seq_len, minimum=1)
    if num_batches is not None:
        check_int("num_batches", num_batches, minimum=0)
    if data.numel() < seq_len + 1:
        raise ValueError(
            f"token_ids must hold at least seq_len + 1 = {seq_len + 1} tokens, got {data.numel()}"
        )
    return _random_windows(data, batch_size, seq_len, _check_seed(seed), num_batches, device)


def _random_windows(
    data: Tensor,
    batch_size: int,
    seq_len: int,
    seed: int,
    num_batches: int | None,
    device: torch.device | str | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Unchecked core of :func:`batches` (its arguments are checked there)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)  # (T+1,)
    produced = 0
    while num_batches is None or produced < num_batches:
        starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
        window = data[starts[:, None] + offsets[None, :]]  # (B, T+1)
        yield window[:, :-1].to(device), window[:, 1:].to(device)
        produced += 1


def sequential_batches(
    token_ids: Sequence[int] | Tensor,
    batch_size: int,
    seq_len: int,
    *,
    device: torch.device | str | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Non-overlapping consecutive windows covering ``token_ids`` once, for evaluation.

    Returns a finite list of ``(x, y)`` with x, y of shape (B, T) (the last batch may have
    fewer rows); trailing tokens that do not fill a window of ``seq_len + 1`` are dropped.
    """
    data = _as_token_tensor(token_ids)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seq_len", seq_len, minimum=1)
    n_windows = (data.numel() - 1) // seq_len
    if n_windows == 0:
        raise ValueError(
            f"token_ids must hold at least seq_len + 1 = {seq_len + 1} tokens, got {data.numel()}"
        )
    starts = torch.arange(n_windows) * seq_len  # (N,)
    windows = data[starts[:, None] + torch.arange(seq_len + 1)[None, :]]  # (N, T+1)
    return [(w[:, :-1].to(device), w[:, 1:].to(device)) for w in windows.split(batch_size, dim=0)]


def train_val_split(
    data: Sequence[Item] | str | Tensor,
    val_fraction: float = 0.1,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> tuple:
    """Split ``data`` into ``(train, val)`` with ``val_fraction`` of the items in ``val``.

    By default the split is contiguous (the last part is validation), which is right for
    a running text or a token stream: a random split would leak overlapping windows.
    ``shuffle=True`` (lists of examples only) shuffles with ``random.Random(seed)`` first.
    Both parts keep the input's type (``str``, ``list``, tensor, ...).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number, got {type(val_fraction).__name__}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not isinstance(data, (str, Tensor, Sequence)):
        raise TypeError(f"data must be a str, a sequence or a tensor, got {type(data).__name__}")
    n = len(data)
    if n < 2:
        raise ValueError(f"data must hold at least 2 items to split, got {n}")
    if shuffle:
        if isinstance(data, (str, Tensor)):
            raise ValueError("shuffle: only lists of examples can be shuffled, not a text/tensor")
        data = list(data)
        random.Random(_check_seed(seed)).shuffle(data)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return data[: n - n_val], data[n - n_val :]
