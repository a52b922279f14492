"""Generated training text for the offline byte-level BPE tokenizer.

The tiny models are random-init, so the tokenizer only has to cut this project's prompts and
replies into sensible pieces: digits and arithmetic (gym_cards, RL4VLM), the JSON keys of the
RL4VLM action format, the cryptogram tags of r1_vlm (``<think> <chars> <answer>``), easy-vqa
questions (colours, shapes), IMMO Reasoner/Observer dialogue words and plain English. The text is
drawn from fixed word lists with a seeded ``random.Random``: the same seed gives the same corpus,
hence the same tokenizer, on every machine.
"""

from __future__ import annotations

import json
import random

COLOURS = "red green blue yellow black white gray grey orange purple brown pink teal".split()
SHAPES = "circle square triangle rectangle star diamond oval shape".split()
CARD_WORDS = (
    "hit stand ace king queen jack card cards deck dealer player hand bust blackjack spades hearts "
    "clubs diamonds suit face value points sum win lose draw"
).split()
TASK_WORDS = (
    "thoughts action current number target formula equation result answer question image picture "
    "describe caption observe observer reasoner reason step move left right up down plus minus "
    "times divided equals invalid valid message decode decoder key letter letters word words coded "
    "plain text grid space solve"
).split()
COMMON = """
the of and to a in is it you that he was for on are as with his they i at be this have from or
one had by word but not what all were we when your can said there use an each which she do how
their if will way about many then them write would like so these her long make thing see him two
has look more day could go come did no most my over know than call first who may down side been
now find any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think say help
low line differ turn cause much mean before move right boy old too same tell does set three want
air well also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school
grow study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story saw far sea draw left late run while press close night real
life few north open seem together next white children begin got walk example ease paper group always
music those both mark often letter until mile river car feet care second book carry took science eat
room friend began idea fish mountain stop once base hear horse cut sure watch color colour wood main
enough plain girl usual young ready above ever red list though feel talk bird soon body dog family
direct pose leave song measure door product black short numeral class wind question happen complete
ship area half rock order fire south problem piece told knew pass since top whole king space heard
best hour better true during hundred five remember step early hold west ground interest reach fast
verb sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice voice
unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field
rest correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check
game shape equate hot miss brought heat snow tire bring yes distant fill east paint language among
quick brown fox jumps lazy over hexagon capital france paris london city river ocean lake forest
apple banana orange bread water milk coffee tea cheese egg rice sugar salt window garden kitchen
table chair floor wall roof street train plane ship bike road bridge tower castle village market
doctor teacher student worker farmer driver friend brother sister baby child woman people family
happy sad angry tired hungry afraid calm bright dark heavy light soft hard warm cool wet empty
always never often sometimes usually today tomorrow yesterday morning evening night week month
spring summer autumn winter january monday weather cloud storm sunny rainy windy snowy
because although however therefore while unless whether either neither both each another other
count compute check verify guess explain compare choose select reply respond return finish
left right middle corner edge top bottom inside outside between behind near far above below
first second third last next previous total remaining correct wrong true false maybe probably
""".split()
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
TAGS = ("<think>", "</think>", "<chars>", "</chars>", "<answer>", "</answer>")
ROLES = ("system", "user", "assistant", "Observer", "Reasoner")


def _sentence(rng: random.Random, n: int) -> str:
    """``n`` random common words as one capitalised sentence."""
    words = rng.choices(COMMON + COLOURS + SHAPES + TASK_WORDS, k=n)
    return " ".join(words).capitalize() + rng.choice(".!?.")


def _arithmetic(rng: random.Random) -> str:
    """An equation over small integers, as in EZPoints / Points24 formulas."""
    a, b, c = rng.randint(0, 13), rng.randint(1, 13), rng.randint(1, 99)
    op = rng.choice("+-*/")
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return rng.choice([f"{a} {op} {b} = {value}", f"({a}{op}{b})*{c}", f"{c} + {a} * {b}", f"{value}"])


def _gym_cards_json(rng: random.Random) -> str:
    """A reply in the RL4VLM JSON action format (NumberLine, Points, Blackjack)."""
    kind = rng.randrange(3)
    thoughts = _sentence(rng, rng.randint(3, 12))
    if kind == 0:
        reply = {"current number": rng.randint(0, 5), "target number": rng.randint(0, 5),
                 "thoughts": thoughts, "action": rng.choice("+-")}
    elif kind == 1:
        cards = rng.choices(["A", "J", "Q", "K", *map(str, range(2, 11))], k=rng.choice([2, 4]))
        reply = {"cards": cards, "current formula": _arithmetic(rng), "thoughts": thoughts,
                 "action": rng.choice([*map(str, range(1, 11)), "+", "-", "*", "/", "(", ")", "="])}
    else:
        reply = {"thoughts": thoughts, "action": rng.choice(["hit", "stand"])}
    return json.dumps(reply)


def _cryptogram(rng: random.Random) -> str:
    """An r1_vlm style decoding reply with think / chars / answer tags."""
    words = rng.sample(COMMON, rng.randint(1, 3))
    spaced = " ".join("_" if ch == " " else ch for ch in " ".join(words))
    return f"<think> {_sentence(rng, 6)} <chars> {spaced} </chars> {_sentence(rng, 4)} </think>\n<answer>{' '.join(words)}</answer>"


def _vqa(rng: random.Random) -> str:
    """An easy-vqa style question and answer."""
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    question, answer = rng.choice([
        (f"What color is the {shape}?", colour), ("What shape is in the image?", shape),
        (f"Is there a {colour} {shape}?", rng.choice(["yes", "no"])),
        (f"Does the image contain a {shape}?", rng.choice(["yes", "no"])),
    ])
    return f"Question: {question}\nAnswer: {answer}"


def _dialogue(rng: random.Random) -> str:
    """An IMMO Reasoner/Observer exchange in ChatML."""
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    turns = [
        ("user", "Describe the image."),
        ("assistant", f"The image shows a {colour} {shape} on a {rng.choice(COLOURS)} background."),
        ("user", f"Reasoner: What is the {rng.choice(TASK_WORDS)} of the {shape}?"),
        ("assistant", f"Observer: {_sentence(rng, rng.randint(3, 8))}"),
    ]
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def _card_talk(rng: random.Random) -> str:
    """Plain sentences about cards and numbers."""
    card, number = rng.choice(CARD_WORDS), rng.choice(NUMBER_WORDS)
    return f"The {card} is worth {rng.randint(1, 11)} ({number}). I {rng.choice(['hit', 'stand'])}."


GENERATORS = (_sentence, _arithmetic, _gym_cards_json, _cryptogram, _vqa, _dialogue, _card_talk)


def corpus(seed: int, lines: int) -> list[str]:
    """``lines`` generated text lines; a pure function of ``(seed, lines)``."""
    rng = random.Random(seed)
    out = [" ".join(COMMON + COLOURS + SHAPES + CARD_WORDS + TASK_WORDS + NUMBER_WORDS),
           " ".join(TAGS + ROLES), "Question: Answer: Observer: Reasoner: describe image"]
    for i in range(lines):
        gen = GENERATORS[i % len(GENERATORS)]
        out.append(gen(rng, rng.randint(4, 16)) if gen is _sentence else gen(rng))
    return out
