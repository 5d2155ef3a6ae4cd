"A person's path: headless Chromium (playwright) opens the page of a real server, uploads a photo and reads the verdict. Skipped without Chromium."
import os, re
from pathlib import Path
import pytest

CHROMIUM = os.environ.get('DR_CHROMIUM', '/usr/bin/chromium')
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'Chromium not found at {CHROMIUM} (apt-get install chromium)')

@pytest.fixture(scope='module')
def page_url(start_server, model_run):
    return start_server(model_run/'model').url

@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        yield b
        b.close()

def test_upload_photo_shows_verdict(browser, page_url, photos, tmp_path):
    photo = tmp_path/'retina.jpeg'; photo.write_bytes(photos['retina.jpeg'])
    page = browser.new_page(viewport={'width': 1100, 'height': 1000})
    page.goto(page_url + '/')
    assert 'screening aid' in page.inner_text('body').lower()
    page.set_input_files('#file', str(photo))
    page.wait_for_selector('#result:not(.hidden)', timeout=30000)
    verdict = page.inner_text('#verdict')
    assert verdict in ('DR', 'No DR')
    assert re.fullmatch(r'\d+\.\d%', page.inner_text('#probability')) and re.fullmatch(r'\d+\.\d%', page.inner_text('#threshold'))
    assert page.inner_text('#quality') in ('gradable', 'NOT gradable: retake the photo')
    assert page.eval_on_selector('#heatmap', 'img => img.complete && img.naturalWidth') == 64
    page.screenshot(path=str(tmp_path/'page.png'), full_page=True)
    page.close()

def test_ungradable_and_bad_file(browser, page_url, photos, tmp_path):
    page = browser.new_page()
    page.goto(page_url + '/')
    dark = tmp_path/'dark.jpeg'; dark.write_bytes(photos['dark.jpeg'])
    page.set_input_files('#file', str(dark))
    page.wait_for_selector('#result:not(.hidden)', timeout=30000)
    assert page.inner_text('#quality').startswith('NOT gradable') and page.inner_text('#reasons').strip()
    bad = tmp_path/'notes.txt'; bad.write_text('not a photo')
    page.set_input_files('#file', str(bad))
    page.wait_for_selector('#error:not(.hidden)', timeout=30000)
    assert 'HTTP 415' in page.inner_text('#error') and page.is_hidden('#result')
    page.close()

def test_docs_page_renders_offline(browser, page_url):
    "The OpenAPI page is Swagger UI served by the app itself (no CDN): it renders the operations."
    page = browser.new_page()
    page.route('**/*', lambda route: route.continue_() if route.request.url.startswith(page_url) else route.abort())  # no internet
    page.goto(page_url + '/docs')
    page.wait_for_selector('text="Screen several photos"', timeout=30000)
    assert 'Screen one fundus photo' in page.inner_text('body')
    page.close()

@pytest.fixture(scope='module')
def ungradable_files(retina, tmp_path_factory) -> dict:
    "A dark and a blurred photo of the sample retina as files (both fail the quality check)."
    from PIL import Image, ImageFilter
    import numpy as np
    d = tmp_path_factory.mktemp('ungradable'); r = retina.resize((700, 700)); out = {}
    for name, img in {'dark': Image.fromarray((np.asarray(r) * 0.05).astype(np.uint8)), 'blurred': r.filter(ImageFilter.GaussianBlur(12))}.items():
        out[name] = d/f'{name}.jpeg'; img.save(out[name], 'JPEG', quality=90)
    return out

GREEN = 'rgb(30, 123, 52)'  # the page's colour for No DR / no referral

@pytest.mark.parametrize('kind', ['dark', 'blurred'])
def test_ungradable_never_green_no_dr(browser, page_url, ungradable_files, kind):
    "Issue 12: an ungradable photo shows 'Ungradable', never a (green) No DR, alone or as one eye of a patient."
    page = browser.new_page()
    page.goto(page_url + '/')
    page.set_input_files('#file', str(ungradable_files[kind]))
    page.wait_for_selector('#result:not(.hidden)', timeout=30000)
    v = page.inner_text('#verdict')
    assert v.startswith('Ungradable') and 'No DR' not in v and page.eval_on_selector('#verdict', 'e => getComputedStyle(e).color') != GREEN
    assert page.is_visible('#prob-note')
    page.set_input_files('#right', str(ungradable_files[kind]))
    page.wait_for_selector('#decision-card:not(.hidden)', timeout=30000)
    assert page.inner_text('#decision') != 'No referral' and 'ungradable' in page.inner_text('#decision-reason')
    assert 'No DR' not in page.inner_text('#eye-right') and page.is_hidden('#eye-left')
    page.close()

def test_patient_decision_for_left_right_pair(browser, page_url, photos, ungradable_files, tmp_path):
    "Issue 12: a left + right pair shows the patient decision on top, and each eye's result."
    good = tmp_path/'good.jpeg'; good.write_bytes(photos['retina.jpeg'])
    page = browser.new_page(viewport={'width': 1100, 'height': 1400})
    page.goto(page_url + '/')
    page.fill('#pid', 'patient-7')
    page.set_input_files('#left', str(good))
    page.set_input_files('#right', str(ungradable_files['dark']))
    page.wait_for_selector('#eye-left:not(.hidden)', timeout=30000); page.wait_for_selector('#eye-right:not(.hidden)', timeout=30000)
    assert page.inner_text('#decision') == 'Refer' and 'right eye ungradable' in page.inner_text('#decision-reason')
    assert '(patient-7)' in page.inner_text('#decision-patient')
    box = lambda sel: page.eval_on_selector(sel, 'e => e.getBoundingClientRect().top')
    assert box('#decision-card') < box('#left') and box('#decision-card') < box('#eyes')  # the decision on top
    page.screenshot(path=str(tmp_path/'patient.png'), full_page=True)
    page.close()

def test_docs_try_it_out_uploads_a_photo(browser, page_url, photos, tmp_path):
    "Issue 14 item 4: /docs 'Try it out' offers a file picker for /predict and the upload gets 200."
    photo = tmp_path/'retina.jpeg'; photo.write_bytes(photos['small.jpeg'])
    page = browser.new_page(viewport={'width': 1200, 'height': 1600})
    page.goto(page_url + '/docs')
    page.click('#operations-default-predict_predict_post .opblock-summary', timeout=30000)
    page.click('#operations-default-predict_predict_post .try-out__btn')
    page.set_input_files('#operations-default-predict_predict_post input[type=file]', str(photo))
    page.click('#operations-default-predict_predict_post .execute')
    page.wait_for_selector('#operations-default-predict_predict_post .live-responses-table tr.response .response-col_status', timeout=30000)
    assert page.inner_text('#operations-default-predict_predict_post .live-responses-table tr.response .response-col_status').strip().startswith('200')
    page.close()
