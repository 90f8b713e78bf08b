"""Writing a file so that no reader ever sees half of it: the content goes to
a temporary file in the same folder, which is then renamed onto the target
(a rename within one filesystem is atomic).  The result gets the permissions
of any file the process creates (0666 less the umask), not the 0600 of a
temporary file.  Subnetwork files use it here; the driver's result files
(subind.engine.files) use the same function."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)``, then rename the result onto ``path``; on any
    failure (or interrupt) the temporary file is removed and ``path`` is as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
