"""The one GOP definition: references, refresh, scene cuts before encoding, padded tails."""

import numpy as np
import pytest

from reftok_deploy.base.gop_plan import DEFAULT_CUT_THRESHOLD, Gop, GopPlanner, NewReference, plan_gops, scene_cut_score, thumbnail
from reftok_deploy.quality.suite import suite_clips
from tests.conftest import moving_still


def test_every_frame_is_a_reference_or_in_exactly_one_block():
    clip = moving_still("coffee", 30, 128)
    gops = plan_gops(clip, 8)
    assert [(g.index, len(g.block)) for g in gops] == [(0, 8), (9, 8), (18, 8), (27, 2)]
    for g in gops:
        assert np.array_equal(g.reference, clip[g.index])
        assert np.array_equal(g.block, clip[g.index + 1 : g.index + 1 + len(g.block)])
    tail = gops[-1].padded(8)
    assert tail.shape == (8, 128, 128, 3) and np.array_equal(tail[2:], np.repeat(clip[-1:], 6, 0))


def test_refresh_blocks_keeps_the_reference():
    gops = plan_gops(moving_still("coffee", 1 + 3 * 8, 128), 8, refresh_blocks=3)
    assert [g.index for g in gops] == [0, 0, 0]


def test_a_cut_starts_a_new_reference_before_it_is_encoded():
    clips = suite_clips(64)
    gops = plan_gops(clips["suite:cut"], 8)
    assert [(g.index, len(g.block), g.cut) for g in gops] == [(0, 8, False), (9, 3, False), (13, 4, True)]
    # No block holds frames from both sides of the cut.
    cut = clips["suite:cut"]
    assert all(scene_cut_score(thumbnail(g.reference), thumbnail(f)) < DEFAULT_CUT_THRESHOLD
               for g in gops for f in g.block)
    assert scene_cut_score(thumbnail(cut[12]), thumbnail(cut[13])) > 2 * DEFAULT_CUT_THRESHOLD


@pytest.mark.parametrize("case", ["static_noise", "pan", "zoom", "fast_object", "screen_text", "local_motion"])
def test_motion_and_noise_are_not_cuts(case):
    clip = suite_clips(128, cases=(case,))[f"suite:{case}"]
    assert all(not g.cut for g in plan_gops(clip, 8))


def test_disabled_cut_detection_and_events_in_order():
    planner = GopPlanner(4, cut_threshold=None)
    clip = suite_clips(32, block_frames=4, cases=("cut",))["suite:cut"]
    events = [e for f in clip for e in planner.push(f)] + planner.flush()
    kinds = [type(e) for e in events]
    assert kinds == [NewReference, Gop, NewReference, Gop]
    assert planner.cuts == 0


def test_bad_planner_arguments():
    with pytest.raises(ValueError):
        GopPlanner(0)
    with pytest.raises(ValueError):
        GopPlanner(8, refresh_blocks=0)
