"""`python -m petlab.study`: write study/dvc.yaml from study/pipeline.yaml and params.yaml's study grid."""

from petlab.core.stage import run_stage
from petlab.study.cells import write_pipeline

run_stage("study", write_pipeline, record_time=False)
