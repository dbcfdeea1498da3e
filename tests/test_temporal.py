"""Acquisition choice: least cloud over the chip, tolerance edges, tie breaks, reasons."""

from __future__ import annotations

import datetime as dt

from terrastill.data.read import Acquisition
from terrastill.data.temporal import TemporalOptions, choose_steps, group_acquisitions


def acq(day: str, coll: str = "HLSS30_2.0") -> Acquisition:
    return Acquisition(coll, day, ({"id": f"{coll}-{day}", "properties": {"datetime": day}},))


def test_targets_end_on_the_observation_date_oldest_first():
    opts = TemporalOptions(num_steps=3, temporal_step=10, temporal_tolerance=2)
    assert opts.targets(dt.date(2024, 5, 21)) == [dt.date(2024, 5, 1), dt.date(2024, 5, 11),
                                                  dt.date(2024, 5, 21)]
    assert opts.search_window(dt.date(2024, 5, 21)) == (dt.date(2024, 4, 29),
                                                        dt.date(2024, 5, 23))


def test_least_cloud_over_the_chip_wins_not_the_closest_date():
    acqs = [acq("2024-05-20"), acq("2024-05-22"), acq("2024-05-24")]
    cloud = {"2024-05-20": 0.40, "2024-05-22": 0.05, "2024-05-24": 0.30}
    opts = TemporalOptions(num_steps=1, temporal_step=0, temporal_tolerance=3, max_cloud=50)
    [c] = choose_steps(acqs, dt.date(2024, 5, 21), opts, lambda a: cloud[a.date])
    assert c.acquisition.date == "2024-05-22" and c.invalid_fraction == 0.05


def test_tolerance_edges_are_inclusive():
    opts = TemporalOptions(num_steps=1, temporal_step=0, temporal_tolerance=3, max_cloud=100)
    inside = choose_steps([acq("2024-05-24")], dt.date(2024, 5, 21), opts, lambda a: 0.0)
    outside = choose_steps([acq("2024-05-25")], dt.date(2024, 5, 21), opts, lambda a: 0.0)
    assert inside[0].acquisition is not None
    assert outside[0].acquisition is None
    assert outside[0].reason == "no source item within ±3 days of 2024-05-21 at step 0"


def test_ties_break_on_closeness_then_earlier_date():
    opts = TemporalOptions(num_steps=1, temporal_step=0, temporal_tolerance=5, max_cloud=100)
    acqs = [acq("2024-05-18"), acq("2024-05-24"), acq("2024-05-22")]
    [c] = choose_steps(acqs, dt.date(2024, 5, 21), opts, lambda a: 0.1)
    assert c.acquisition.date == "2024-05-22"
    acqs = [acq("2024-05-23"), acq("2024-05-19")]
    [c] = choose_steps(acqs, dt.date(2024, 5, 21), opts, lambda a: 0.1)
    assert c.acquisition.date == "2024-05-19"


def test_an_acquisition_serves_one_step_only_and_cloud_limit_gives_a_reason():
    opts = TemporalOptions(num_steps=2, temporal_step=2, temporal_tolerance=3, max_cloud=20)
    acqs = [acq("2024-05-20"), acq("2024-05-10")]
    steps = choose_steps(acqs, dt.date(2024, 5, 21), opts, lambda a: 0.0, "HLS")
    assert steps[0].acquisition.date == "2024-05-20"
    assert steps[1].acquisition is None  # 2024-05-20 is taken, 2024-05-10 too far
    cloudy = choose_steps([acq("2024-05-21")], dt.date(2024, 5, 21),
                          TemporalOptions(1, 0, 3, 20), lambda a: 0.35, "HLS")
    assert cloudy[0].acquisition is None
    assert "exceed 20% masked over the chip (least: 35.0% on 2024-05-21)" in cloudy[0].reason


def test_grouping_mosaics_items_of_one_collection_and_day():
    items = [
        {"id": "b", "collection": "HLSS30_2.0", "properties": {"datetime": "2024-05-01T10:00Z"}},
        {"id": "a", "collection": "HLSS30_2.0", "properties": {"datetime": "2024-05-01T10:01Z"}},
        {"id": "c", "collection": "HLSL30_2.0", "properties": {"datetime": "2024-05-01T10:30Z"}},
    ]
    groups = group_acquisitions(items)
    assert [(g.collection, g.item_ids) for g in groups] == [("HLSL30_2.0", ["c"]),
                                                            ("HLSS30_2.0", ["a", "b"])]


def _reference_choice(acqs, last, opts, frac):
    """The rule written out window by window: least share, then closeness, earlier date,
    collection; an acquisition serves one step; the cloud limit rejects a step."""
    used, out = set(), []
    for target in opts.targets(last):
        cands = [a for a in acqs if abs((dt.date.fromisoformat(a.date) - target).days)
                 <= opts.temporal_tolerance and a.key not in used]
        if not cands:
            out.append(None)
            continue
        best = min(cands, key=lambda a: (frac[a.key], abs((dt.date.fromisoformat(a.date)
                                                           - target).days), a.date,
                                         a.collection))
        if frac[best.key] * 100 > opts.max_cloud:
            out.append(None)
            continue
        used.add(best.key)
        out.append(best.key)
    return out


def test_many_windows_at_once_choose_as_each_window_alone():
    import numpy as np

    from terrastill.data.temporal import pick_steps

    rng = np.random.default_rng(3)
    days = sorted({dt.date(2024, 4, 1) + dt.timedelta(days=int(d))
                   for d in rng.integers(0, 60, 14)})
    acqs = [acq(d.isoformat(), coll) for d in days for coll in ("HLSL30_2.0", "HLSS30_2.0")
            if rng.random() < 0.7]
    opts = TemporalOptions(num_steps=3, temporal_step=12, temporal_tolerance=5, max_cloud=40)
    n = 300
    # few distinct shares, so ties (broken by date and collection) are common
    shares = {a.key: rng.choice([0.0, 0.1, 0.25, 0.5, 0.9], n) for a in acqs}
    last = dt.date(2024, 5, 20)
    picks = pick_steps(acqs, last, opts, lambda a: shares[a.key], n, "HLS")
    chosen_steps = 0
    for w in range(n):
        want = _reference_choice(acqs, last, opts, {k: v[w] for k, v in shares.items()})
        got = [None if i < 0 else acqs[i].key for i in picks.index[w]]
        assert got == want, w
        alone = choose_steps(acqs, last, opts, lambda a, w=w: shares[a.key][w], "HLS")
        assert [c.acquisition.key if c.acquisition else None for c in alone] == want
        assert [c.reason for c in alone] == [picks.reason(w, k) for k in range(3)]
        chosen_steps += sum(k is not None for k in want)
    assert 0 < chosen_steps < 3 * n  # both outcomes occur


def test_clearest_date_wants_every_step_clear():
    import datetime as dt

    from terrastill.data.temporal import TemporalOptions, clearest_date

    def item(day: str, cloud: float) -> dict:
        return {"properties": {"datetime": f"{day}T10:00:00Z", "eo:cloud_cover": cloud}}

    opts = TemporalOptions(num_steps=2, temporal_step=10, temporal_tolerance=2)
    items = [item("2024-06-01", 5), item("2024-06-11", 5), item("2024-06-21", 90),
             item("2024-06-30", 3)]
    # 06-30 is the clearest scene, but its first step (06-20 ± 2) only has 06-21 at 90 %:
    # the latest date whose every step is clear is 06-11
    assert clearest_date(items, opts) == dt.date(2024, 6, 11)
    # no clear date after 06-20: the cloudiest steps tie at 90 %, the later date wins
    assert clearest_date(items, opts, first=dt.date(2024, 6, 20)) == dt.date(2024, 6, 30)
    assert clearest_date([], opts) is None
