"""subind: the Subtask Induction driver — discovery, transfer, the experiments
and the `subind` command line, built on the kernel library (subind_fast).

It comes with the ``experiments`` extra (``pip install 'subind-fast[experiments]'``);
the kernel library needs none of it.  Importing the driver without the extra is
an ImportError naming the missing packages and the extra, not a traceback deep
in whichever module first needed one."""
import importlib.util

#: the experiments extra (pyproject.toml): import name → distribution name
EXPERIMENTS_EXTRA = {"tyro": "tyro", "yaml": "pyyaml", "transformers": "transformers",
                     "timm": "timm", "tqdm": "tqdm", "matplotlib": "matplotlib",
                     "skimage": "scikit-image", "PIL": "pillow", "scipy": "scipy"}

_missing = [dist for module, dist in EXPERIMENTS_EXTRA.items()
            if importlib.util.find_spec(module) is None]
if _missing:
    raise ImportError(f"the subind driver needs the 'experiments' extra, which is not installed "
                      f"(missing: {', '.join(_missing)}): pip install 'subind-fast[experiments]'; "
                      "the kernel library (import subind_fast) works without it")
