"""Captions for `fashion-text`: the training captions per class and held-out evaluation prompts.

`TRAIN_CAPTIONS[c]` lists every caption the text UNet saw for class c (templates times names, plus
short descriptions). `HELDOUT_PROMPTS[c]` were never trained on, in three kinds:

- "direct": the class asked for by name, in phrasings not used in training;
- "paraphrase": other words for the same garment;
- "indirect": what it is for or looks like, without naming it ("footwear for running").

A test checks that no held-out prompt appears among the training captions.
"""

from __future__ import annotations

_TEMPLATES = ["{}", "a {}", "a photo of a {}", "an image of a {}", "a picture of a {}",
              "a grayscale photo of a {}"]
_PLURAL_TEMPLATES = ["{}", "a pair of {}", "a photo of {}", "a photo of a pair of {}",
                     "an image of {}"]

# (singular names, plural names, descriptions)
_CLASSES: list[tuple[list[str], list[str], list[str]]] = [
    (  # 0 T-shirt/top
        ["t-shirt", "tshirt", "tee", "top", "tee shirt", "short-sleeved top", "tank top",
         "t-shirt or top"],
        [],
        ["a plain short sleeve t-shirt", "a simple cotton tee", "a sleeveless top",
         "a casual top with short sleeves", "a t-shirt seen from the front"],
    ),
    (  # 1 Trouser
        ["trouser", "pant leg"],
        ["trousers", "pants", "jeans", "slacks", "leggings", "sweatpants"],
        ["a pair of long trousers", "blue jeans with two legs", "straight leg pants",
         "formal trousers", "a pair of trousers seen from the front"],
    ),
    (  # 2 Pullover
        ["pullover", "sweater", "jumper", "sweatshirt", "knit sweater", "hoodie",
         "long-sleeved pullover"],
        [],
        ["a knitted sweater with long sleeves", "a warm wool pullover", "a thick jumper",
         "a crewneck sweatshirt", "a pullover seen from the front"],
    ),
    (  # 3 Dress
        ["dress", "gown", "sundress", "frock", "one-piece dress", "maxi dress"],
        [],
        ["a long dress for women", "a summer dress with thin straps", "a party dress",
         "an elegant evening dress", "a dress seen from the front"],
    ),
    (  # 4 Coat
        ["coat", "jacket", "overcoat", "parka", "raincoat", "winter coat", "zip-up jacket"],
        [],
        ["a long coat with buttons", "a warm jacket with a zipper", "a heavy winter overcoat",
         "a jacket with long sleeves and a collar", "a coat seen from the front"],
    ),
    (  # 5 Sandal
        ["sandal", "flip-flop", "open-toed shoe", "strappy sandal", "slide", "heeled sandal"],
        ["sandals", "flip-flops"],
        ["a summer sandal with straps", "an open shoe with thin straps", "a beach sandal",
         "a high heeled sandal", "a sandal seen from the side"],
    ),
    (  # 6 Shirt
        ["shirt", "button-up shirt", "dress shirt", "blouse", "flannel shirt", "collared shirt",
         "long-sleeved shirt", "polo shirt"],
        [],
        ["a shirt with buttons down the front", "a formal shirt with a collar",
         "a checked flannel shirt", "a women's blouse", "a shirt seen from the front"],
    ),
    (  # 7 Sneaker
        ["sneaker", "trainer", "running shoe", "athletic shoe", "tennis shoe", "sports shoe",
         "canvas shoe"],
        ["sneakers", "trainers", "running shoes"],
        ["a low-top sneaker with laces", "a sports shoe with a rubber sole",
         "a white canvas sneaker", "a shoe for the gym", "a sneaker seen from the side"],
    ),
    (  # 8 Bag
        ["bag", "handbag", "purse", "tote bag", "backpack", "shoulder bag", "satchel",
         "shopping bag"],
        [],
        ["a leather handbag with a handle", "a bag with a strap", "a women's purse",
         "a large tote for shopping", "a bag seen from the front"],
    ),
    (  # 9 Ankle boot
        ["ankle boot", "boot", "short boot", "chelsea boot", "bootie", "heeled boot",
         "leather boot"],
        ["ankle boots", "boots"],
        ["a boot that reaches the ankle", "a leather boot with a heel", "a short winter boot",
         "a chelsea boot with an elastic side", "an ankle boot seen from the side"],
    ),
]


def _captions(singular: list[str], plural: list[str], descriptions: list[str]) -> list[str]:
    out: list[str] = []
    for name in singular:
        for template in _TEMPLATES:
            article_fix = template.replace("a {}", "an {}") if name[0] in "aeiou" else template
            out.append(article_fix.format(name))
    for name in plural:
        out.extend(template.format(name) for template in _PLURAL_TEMPLATES)
    out.extend(descriptions)
    return sorted(set(out))


TRAIN_CAPTIONS: dict[int, list[str]] = {c: _captions(*spec) for c, spec in enumerate(_CLASSES)}

# Plain class-name prompts, the ones quality targets speak of; all of them are training captions.
CLASS_NAME_PROMPTS: dict[int, str] = {
    0: "a t-shirt", 1: "a pair of trousers", 2: "a pullover", 3: "a dress", 4: "a coat",
    5: "a sandal", 6: "a shirt", 7: "a sneaker", 8: "a bag", 9: "an ankle boot",
}

HELDOUT_PROMPTS: dict[int, dict[str, list[str]]] = {
    0: {"direct": ["a product photo of a t-shirt", "one t-shirt on a white background"],
        "paraphrase": ["a crew neck tee shirt", "a casual short sleeve cotton shirt"],
        "indirect": ["what people wear on a hot summer day at the beach",
                     "the garment printed with band logos at concerts"]},
    1: {"direct": ["a product photo of trousers", "one pair of trousers on a white background"],
        "paraphrase": ["a pair of chinos", "denim jeans"],
        "indirect": ["clothing that covers both legs", "what you wear below the waist to the office"]},
    2: {"direct": ["a product photo of a pullover", "one pullover on a white background"],
        "paraphrase": ["a cozy knitted jumper", "a wool sweater"],
        "indirect": ["something warm to pull over your head in autumn",
                     "a knitted garment grandma makes for winter"]},
    3: {"direct": ["a product photo of a dress", "one dress on a white background"],
        "paraphrase": ["a cocktail gown", "a flowing summer frock"],
        "indirect": ["what a bridesmaid wears to a wedding", "a one-piece garment with a skirt"]},
    4: {"direct": ["a product photo of a coat", "one coat on a white background"],
        "paraphrase": ["a trench coat", "a padded winter jacket"],
        "indirect": ["outerwear that keeps you warm in the snow",
                     "what you put on over everything before going out in the cold"]},
    5: {"direct": ["a product photo of a sandal", "one sandal on a white background"],
        "paraphrase": ["a pair of thongs for the pool", "an open summer shoe with straps"],
        "indirect": ["footwear for the beach", "shoes that leave your toes uncovered"]},
    6: {"direct": ["a product photo of a shirt", "one shirt on a white background"],
        "paraphrase": ["an oxford button-down", "a long sleeve collared blouse"],
        "indirect": ["what a businessman wears under his tie", "a garment with a collar and cuffs"]},
    7: {"direct": ["a product photo of a sneaker", "one sneaker on a white background"],
        "paraphrase": ["a pair of kicks", "a jogging shoe"],
        "indirect": ["footwear for running", "shoes you wear to play basketball"]},
    8: {"direct": ["a product photo of a bag", "one bag on a white background"],
        "paraphrase": ["a leather clutch", "a messenger bag"],
        "indirect": ["something to carry your belongings in", "what a woman keeps her wallet in"]},
    9: {"direct": ["a product photo of an ankle boot", "one ankle boot on a white background"],
        "paraphrase": ["a suede bootie", "a short lace-up boot"],
        "indirect": ["footwear that covers the ankle", "shoes for walking in autumn rain"]},
}


def all_train_captions() -> list[tuple[str, int]]:
    """(caption, class) for every training caption."""
    return [(caption, c) for c, captions in TRAIN_CAPTIONS.items() for caption in captions]
