"""Geirhos et al.'s 16 entry-level categories and the ImageNet classes each
aggregates.

The WNID lists are the published ones (Geirhos et al. 2019, "ImageNet-trained
CNNs are biased towards texture", category definitions of their stimuli);
WNIDs outside ILSVRC-2012 are kept as published and simply match no class.
The ImageNet indices are derived from them against the ILSVRC-2012 synset
order timm ships, once; tests check the result against the authors' index
lists.
"""
from __future__ import annotations

from functools import lru_cache

import torch

GEIRHOS_WNIDS: dict[str, tuple[str, ...]] = {
    "airplane": ("n02690373", "n03955296", "n13861050", "n13941806"),
    "bear": ("n02132136", "n02133161", "n02134084", "n02134418"),
    "bicycle": ("n02835271", "n03792782"),
    "bird": (
        "n01321123", "n01514859", "n01792640", "n07646067", "n01530575", "n01531178",
        "n01532829", "n01534433", "n01537544", "n01558993", "n01562265", "n01560419",
        "n01582220", "n10281276", "n01592084", "n01601694", "n01614925", "n01616318",
        "n01622779", "n01795545", "n01796340", "n01797886", "n01798484", "n01817953",
        "n01818515", "n01819313", "n01820546", "n01824575", "n01828970", "n01829413",
        "n01833805", "n01843065", "n01843383", "n01855032", "n01855672", "n07646821",
        "n01860187", "n02002556", "n02002724", "n02006656", "n02007558", "n02009229",
        "n02009912", "n02011460", "n02013706", "n02017213", "n02018207", "n02018795",
        "n02025239", "n02027492", "n02028035", "n02033041", "n02037110", "n02051845",
        "n02056570"),
    "boat": ("n02951358", "n03344393", "n03662601", "n04273569", "n04612373", "n04612504"),
    "bottle": ("n02823428", "n03937543", "n03983396", "n04557648", "n04560804", "n04579145",
               "n04591713"),
    "car": ("n02814533", "n03100240", "n03100346", "n13419325", "n04285008"),
    "cat": ("n02122878", "n02123045", "n02123159", "n02126465", "n02123394", "n02123597",
            "n02124075", "n02125311"),
    "chair": ("n02791124", "n03376595", "n04099969", "n00605023", "n04429376"),
    "clock": ("n02708093", "n03196217", "n04548280"),
    "dog": tuple(f"n02{n}" for n in (
        "085782 085936 086079 086240 086646 086910 087046 087394 088094 088238 088364 "
        "088466 088632 089078 089867 089973 090379 090622 090721 091032 091134 091244 "
        "091467 091635 091831 092002 092339 093256 093428 093647 093754 093859 093991 "
        "094114 094258 094433 095314 095570 095889 096051 096294 096437 096585 097047 "
        "097130 097209 097298 097474 097658 098105 098286 099267 099429 099601 099712 "
        "099849 100236 100583 100735 100877 101006 101388 101556 102040 102177 102318 "
        "102480 102973 104029 104365 105056 105162 105251 105505 105641 105855 106030 "
        "106166 106382 106550 106662 107142 107312 107574 107683 107908 108000 108422 "
        "108551 108915 109047 109525 109961 110063 110185 110627 110806 110958 111129 "
        "111277 111500 112018 112350 112706 113023 113624 113712 113799 113978").split()
    ) + ("n08825211",),
    "elephant": ("n02504013", "n02504458"),
    "keyboard": ("n03085013", "n04505470"),
    "knife": ("n03041632",),
    "oven": ("n03259401", "n04111414", "n04111531"),
    "truck": ("n03345487", "n03417042", "n03770679", "n03796401", "n00319176", "n01016201",
              "n03930630", "n03930777", "n05061003", "n06547832", "n10432053", "n03977966",
              "n04461696", "n04467665"),
}

CATEGORIES: tuple[str, ...] = tuple(sorted(GEIRHOS_WNIDS))


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 WNIDs in class-index order."""
    from timm.data import ImageNetInfo

    synsets = list(ImageNetInfo().label_names())
    if len(synsets) != 1000:
        raise RuntimeError(f"timm's ImageNet synset list has {len(synsets)} entries, not 1000")
    return synsets


@lru_cache(maxsize=1)
def imagenet_indices() -> dict[str, tuple[int, ...]]:
    """{category: sorted ImageNet class indices whose WNID it lists}."""
    position = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    return {c: tuple(sorted(position[w] for w in wnids if w in position))
            for c, wnids in GEIRHOS_WNIDS.items()}


def aggregate_imagenet(probabilities: torch.Tensor,
                       categories: tuple[str, ...] = CATEGORIES) -> torch.Tensor:
    """(batch, 1000) ImageNet softmax → (batch, 16): each category's score is
    the mean probability over its ImageNet classes (Geirhos' aggregation)."""
    if probabilities.ndim != 2 or probabilities.shape[1] != 1000:
        raise ValueError(f"expected (batch, 1000) ImageNet probabilities, got "
                         f"{tuple(probabilities.shape)}")
    table = imagenet_indices()
    return torch.stack([probabilities[:, list(table[c])].mean(dim=1) for c in categories], dim=1)


def wnid_to_category() -> dict[str, str]:
    """Every listed WNID → its category (for building 16-class ImageNet)."""
    return {w: c for c, wnids in GEIRHOS_WNIDS.items() for w in wnids}
