"The serving path stays light: importing a serving module loads no training or plotting library, and none loads a pipeline (stage) module."
import subprocess, sys
import pytest

HEAVY = ('torch', 'torchvision', 'fastai', 'pandas', 'matplotlib', 'sklearn', 'skimage')
STAGES = ('data', 'synthetic', 'reproduce', 'evaluate', 'train', 'config')  # the service needs none of them

@pytest.mark.parametrize('module', ['dr_detection.serve', 'dr_detection.infer', 'dr_detection.quality', 'dr_detection.preprocess',
                                    'dr_detection.screen', 'dr_detection.predict'])
def test_no_heavy_imports(module):
    "In a fresh interpreter: `module` imports none of `HEAVY` and none of the pipeline modules `STAGES`."
    forbidden = HEAVY + tuple(f'dr_detection.{m}' for m in STAGES)
    code = f"import sys, {module}; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]', f'{module} imports {r.stdout.strip()}'
