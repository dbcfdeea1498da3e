"""The README's main command, end to end, at --quick size."""

from __future__ import annotations

import pytest
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from terrastill.cli import app


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(quick_demo):
    runner = CliRunner()
    out, summary = quick_demo["out"], quick_demo["summary"]
    res = runner.invoke(app, ["demo", str(out), "--quick"])  # resumed: every stage reused
    assert res.exit_code == 0, res.output
    assert summary["chips"]["chips"] > 5
    assert {"teacher", "student"} <= set(summary)
    assert summary["teacher"]["precision"]["metric"] == "miou"
    from terrastill.models.modelfile import read_card

    for key in ("teacher", "student"):  # dense truth, with intervals, in summary and card
        truth = summary[key]["test_truth"]
        assert "error" in truth or (
            truth["intervals"]["miou"][0] <= truth["miou"] <= truth["intervals"]["miou"][1]
            and truth["n_pixels"] > summary[key]["test"]["n_pixels"]), truth
        assert read_card(summary[key]["path"]).metrics["test_truth"] == truth
    for cog in summary["prediction"]["classes"]:
        assert cog_validate(cog, quiet=True)[0]
    scores = summary["prediction"]["vs_truth"]
    assert scores and all(s["accuracy"] > 0.8 for s in scores.values()), scores
    assert sorted(p.name for p in (out / "serve-models").glob("*.pt")) == [
        "flood-student.pt", "flood-teacher.pt"]
    assert "prediction COG" in res.output
    secs = summary["seconds"]  # wall-clock per stage, the README's demo timing
    assert set(secs) == {"world", "chips", "teacher", "student", "prediction", "total"}
    assert secs["total"] >= secs["teacher"] + secs["prediction"] > 0
    assert "seconds per stage" in res.output
    assert "of the world got a prediction" in res.output
    assert 0.5 < summary["prediction"]["valid_share"] <= 1
    assert summary["rejected"]["rows"] == summary["chips"]["rejected_rows"]
    assert "fine-tuning" not in res.output and "distilling" not in res.output
    assert "fine-tuning" in quick_demo["output"]  # the first run did every stage

    # demo --serve lists the demo's own prediction as a finished job (once)
    from app_support import local_client
    from terrastill.app.main import create_app
    from terrastill.app.settings import Settings
    from terrastill.demo import add_demo_job

    job_id = add_demo_job(out, summary)
    assert add_demo_job(out, summary) == job_id
    settings = Settings(models_dir=out / "serve-models", data_dir=out / "serve",
                        catalog=summary["catalog"])
    with local_client(create_app(settings)) as c:
        jobs = c.get("/api/jobs").json()
        # (the browser test may have added a job of its own to the shared demo's server)
        assert [j["id"] for j in jobs].count(job_id) == 1
        job = next(j for j in jobs if j["id"] == job_id)
        assert job["status"] == "done" and job["model"] == "flood-student"
        assert 0 < job["valid_share"] <= 1 and set(job["layers"]) == {"classes", "truecolor"}
        assert len(job["links"]["download"]["classes"]) == len(summary["prediction"]["classes"])
        tj = c.get(job["links"]["tilejson"]["classes"])
        assert tj.status_code == 200
        assert c.get(job["links"]["download"]["classes"][0]).status_code == 200
        info = c.get("/api/catalog").json()
        assert info["dates"] and summary["prediction"]["date"] >= info["start"]
