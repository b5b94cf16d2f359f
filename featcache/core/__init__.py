"""The lowest layer: errors, default paths, atomic files, progress lines, text escaping, the machine and
the Ray connection. Light to import (standard library, numpy, tqdm, joblib): the CLI loads it before any command runs."""
