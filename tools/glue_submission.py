"""Bundle GLUE leaderboard files from fine-tuning (or ensemble) workdirs into the one zip that
gluebenchmark.com takes: CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv,
MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv and AX.tsv at its top level.

    python tools/glue_submission.py --runs=/tmp/cola,/tmp/sst2_ensemble,...,/tmp/mnli \
        --data_dir=glue_data --output=/tmp/glue_submission.zip

Each run is a workdir of `robertax.finetune` or `robertax.ensemble` with
--config.predict_test=True (its `submission/` folder), or a folder of leaderboard files. Every
file is checked before the zip is written (`glue.read_submission`: header, indices, label
strings); with --data_dir, its indices must be exactly those of the test file it answers.
All eleven files are required unless --partial; a file found in two runs is refused.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from robertax import cli  # noqa: E402
from robertax.tasks import glue  # noqa: E402


def collect(runs: list[str]) -> dict[str, str]:
    """Leaderboard file name -> its path, from each run's submission/ folder (or the run
    folder itself when it holds the files)."""
    found: dict[str, str] = {}
    for run in runs:
        folder = os.path.join(run, "submission")
        if not os.path.isdir(folder):
            folder = run
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{run}: no such directory")
        names = sorted(n for n in os.listdir(folder) if n in glue.SUBMISSION_FILES)
        if not names:
            raise FileNotFoundError(f"{run}: no GLUE leaderboard files in {folder} (fine-tune "
                                    "with --config.predict_test=True to write them)")
        for name in names:
            path = os.path.join(folder, name)
            if name in found:
                raise ValueError(f"{name} is in two runs: {found[name]} and {path}")
            found[name] = path
    return found


def check(found: dict[str, str], data_dir: str | None, partial: bool) -> list[tuple]:
    """(file name, rows, path) of every file, in the leaderboard's order, each read by
    `glue.read_submission` and, with `data_dir`, matched to its test file's indices."""
    missing = [n for n in glue.SUBMISSION_FILES if n not in found]
    if missing and not partial:
        raise ValueError(f"missing {len(missing)} of the {len(glue.SUBMISSION_FILES)} GLUE "
                         f"files: {', '.join(missing)} (--partial bundles the others)")
    rows = []
    for name in glue.SUBMISSION_FILES:
        if name not in found:
            continue
        task, split, indices = glue.read_submission(found[name])
        if data_dir:
            want = [ex.idx for ex in glue.read_tsv(task, data_dir, split)]
            if sorted(indices) != sorted(want):
                extra = sorted(set(indices) - set(want))
                lack = sorted(set(want) - set(indices))
                raise ValueError(
                    f"{found[name]}: {len(indices)} predictions for the {len(want)} rows of "
                    f"{task.name}'s {split} file" +
                    (f"; indices not in it: {cli.some([str(i) for i in extra])}" if extra
                     else "") +
                    (f"; none for: {cli.some([str(i) for i in lack])}" if lack else ""))
        rows.append((name, len(indices), found[name]))
    return rows


def bundle(runs: list[str], output: str, data_dir: str | None = None,
           partial: bool = False) -> list[tuple]:
    """Checks every file, then writes the zip; returns `check`'s rows."""
    rows = check(collect(runs), data_dir, partial)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as z:
        for name, _, path in rows:
            z.write(path, arcname=name)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True,
                   help="comma-separated workdirs (or folders of leaderboard files)")
    p.add_argument("--output", required=True, help="the zip to write")
    p.add_argument("--data_dir", default=None,
                   help="the GLUE root: check each file's indices against its test file")
    p.add_argument("--partial", action="store_true", help="bundle fewer than all eleven")
    args = p.parse_args(argv)
    with cli.bad_input_exits():
        rows = bundle([r for r in args.runs.split(",") if r], args.output, args.data_dir,
                      args.partial)
    for name, n, path in rows:
        print(f"{name:12s} {n:>7,} rows  {path}")
    print(f"{len(rows)} of {len(glue.SUBMISSION_FILES)} files -> {args.output}")


if __name__ == "__main__":
    main()
