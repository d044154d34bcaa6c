"""Crash consistency with a real ComfyUI server (infusion_dev/crash.py): 20 SIGKILLs at seeded random moments of
a training that saves a snapshot and its resume state every step, counted in saves (most of them cut a save
short). Every file in models/infusion loads after every kill, and the run resumed to its end wrote the same
files, byte for byte, as an uninterrupted run."""
from infusion_dev import crash


def test_killed_training_leaves_only_whole_files_and_resumes_to_the_uninterrupted_result(pack, comfy_path,
                                                                                        tmp_path):
    report = crash.crash_trial(comfy_path, str(tmp_path), kills=20, seed=0, steps=40)
    print(report.summary())
    assert report.kills == 20
    assert report.corrupt == [] and report.mismatches == [], report.summary()
    # The trial did what it claims: some kills cut a save short, and runs made progress between kills.
    assert report.temporaries_left >= 1 and len(set(report.steps_at_kills)) >= 2, report.summary()
    assert max(report.steps_at_kills) < 40 and report.files_checked > 20 * 2 + 40
