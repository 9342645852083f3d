"""The identity-probe part of the report: how well each network's codes tell people apart,
beside the AU F1 of the same network's codes (``featbench probe identity``,
:mod:`classify.probe`).

A network whose codes identify people almost perfectly gives per-AU classifiers a shortcut
(who the person is) that does not transfer to new people; the table lets a reader set that
against how well the same codes detect AUs.
"""

from featbench.app.cells import ci, md_table, num


def _best_run(ok, model, region):
    """The best occurrence run (by mean F1) of a classifier on ``model``'s stored codes of
    ``region`` (region-based ``auto`` runs stand in for a region probe; fine-tuned networks and
    votes are other codes); None when there is none."""
    from classify.kinds import list_kinds

    if not len(ok) or "model" not in ok:
        return None
    on_codes = list_kinds(trained_by="classify")
    same = ok[(ok["model"].astype(str) == model) & ok["clf"].astype(str).isin(on_codes)]
    for want in (region,) + (("auto",) if region != "full" else ()):
        rows = same[same["region"].astype(str) == want]
        rows = rows[rows["mean_f1"].notna()] if len(rows) else rows
        if len(rows):
            return rows.sort_values("mean_f1", ascending=False, kind="stable").iloc[0]
    return None


def probe_lines(workspace, dataset, ok):
    """Return the report's lines of the identity probe ([] when none was run on ``dataset``).

    ``ok``: the succeeded occurrence runs of ``summary.csv`` (the report's table).
    """
    from classify.probe import read_probe_rows
    from featbench.core.errors import StoreError

    try:
        probes = read_probe_rows(workspace, dataset)
    except StoreError as exc:  # one unreadable side table must not cost the whole report
        return ["## Identity in the codes (featbench probe identity)", "", f"Not shown: {exc}", ""]
    if not len(probes):
        return []
    rows = []
    for _, p in probes.iterrows():
        run = _best_run(ok, str(p["model"]), str(p["region"]))
        rows.append([f"`{p['model']}`", p["region"],
                     ci(p["accuracy"], p.get("accuracy_lo"), p.get("accuracy_hi")),
                     num(p.get("balanced_accuracy")), num(p["chance"]), int(p["subjects"]),
                     "—" if run is None else f"`{run['run']}`",
                     "—" if run is None else num(run["mean_f1"])])
    return ["## Identity in the codes (featbench probe identity)", "",
            "A linear classifier predicts the subject from each network's codes; every video is "
            "split in time (first frames train, last frames test, a gap between), so the same "
            "frames never train and test. Accuracy in % with its 95 % subject-bootstrap interval, "
            "against chance (1 / subjects); beside it the best AU run on the same codes. High "
            "identity accuracy means the codes carry who the person is: a shortcut per-AU "
            "classifiers can take that does not carry over to new people.", "",
            md_table(["network", "region", "identity accuracy", "balanced accuracy", "chance",
                       "subjects", "best AU run on these codes", "its mean F1"], rows), ""]
