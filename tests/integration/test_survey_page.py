"""The survey page as a customer meets it: the link from the delivered e-mail opened in a real
headless Chromium (Debian's ``chromium`` and ``chromedriver``), answered, thanked."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.integration.conftest import StartPlatform
from tests.integration.test_followup import BROWSER, DAY, mail, start_loop, submit
from tests.support import free_port, resolve_case

pytestmark = pytest.mark.integration


def chromium() -> webdriver.Chrome:
    """Headless Chromium, phone-sized; a machine without it fails the test, saying why."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(
            "Chromium is needed for the survey page test: install the Debian packages"
            " chromium and chromium-driver (./dev test does so as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=390,844")  # a phone
    options.add_argument("--lang=pt-PT")  # a Portuguese customer's browser
    options.add_experimental_option("prefs", {"intl.accept_languages": "pt-PT,pt"})
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}")


@dataclass
class Seen:
    lang: str
    title: str
    heading: str
    text: str
    fits_the_screen: bool


def look(browser: webdriver.Chrome) -> Seen:
    return Seen(
        lang=browser.find_element(By.TAG_NAME, "html").get_attribute("lang") or "",
        title=browser.title,
        heading=browser.find_element(By.TAG_NAME, "h1").text,
        text=browser.find_element(By.TAG_NAME, "main").text,
        fits_the_screen=bool(
            browser.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
            )
        ),
    )


def answer(browser: webdriver.Chrome, link: str) -> tuple[Seen, Seen, int]:
    """Open the link, try to send it empty (the browser refuses: required answers), answer
    as a customer would (clicking labels), send. The form, the thank-you page, and how many
    scripts the page has."""
    browser.get(link)
    form = look(browser)
    scripts = len(browser.find_elements(By.TAG_NAME, "script"))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert browser.current_url == link and look(browser).heading == form.heading  # not sent
    browser.find_element(By.XPATH, "//input[@name='score'][@value='2']/..").click()
    browser.find_element(By.XPATH, "//input[@name='solved'][@value='false']/..").click()
    label = browser.find_element(By.CSS_SELECTOR, "label[for=comment]").text
    assert label  # the comment box has a visible label
    browser.find_element(By.ID, "comment").send_keys("Continua avariada <b>já</b>")
    browser.find_element(By.XPATH, "//input[@name='nps'][@value='3']/..").click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def replaced(b: webdriver.Chrome) -> bool:
        try:
            return bool(b.find_element(By.TAG_NAME, "h1").text != form.heading)
        except StaleElementReferenceException:
            return False  # the page was replaced under the lookup: look again
        except WebDriverException as exc:
            if "does not belong to the document" in (exc.msg or ""):
                return False  # the same, as chromedriver sometimes tells it
            raise

    WebDriverWait(browser, 20).until(replaced)
    return form, look(browser), scripts


def reopen(browser: webdriver.Chrome, link: str) -> Seen:
    browser.get(link)
    return look(browser)


async def test_the_customer_answers_in_a_browser_from_the_link_in_the_e_mail(
    start_platform: StartPlatform, smtp, followup_policy, http: httpx.AsyncClient
):
    port = free_port()  # the link in the e-mail leads to this followup
    p, clock, inbox = await start_loop(
        start_platform,
        smtp,
        followup_policy,
        public_url=f"http://127.0.0.1:{port}",
        ports={"followup": port},
    )
    cid = await submit(p, http, "ana@example.pt")
    await resolve_case(http, p.url("resolution"), cid)
    clock.advance(3 * DAY + timedelta(minutes=1))
    message = await mail(inbox, "ana@example.pt", "Como correu?")
    body = message.get_content()
    # the wording fits the delay, and the expiry names its time zone
    assert "Há 3 dias resolvemos a sua reclamação" in body
    assert re.search(r"válido até .+ \d\d:\d\d \(UTC\)", body), body
    link = re.search(r"http://127\.0\.0\.1:\d+/surveys/\S+", body)
    assert link, body

    browser = await asyncio.to_thread(chromium)
    try:
        form, thanks, scripts = await asyncio.to_thread(answer, browser, link.group(0))
        again = await asyncio.to_thread(reopen, browser, link.group(0))
        broken = await asyncio.to_thread(reopen, browser, link.group(0)[:-3] + "AAA")
    finally:
        await asyncio.to_thread(browser.quit)

    assert form.lang == "pt" and form.heading.startswith("A sua opinião sobre a reclamação CMP-")
    assert "grau de satisfação" in form.text and form.fits_the_screen and scripts == 0
    assert thanks.lang == "pt" and thanks.heading == "Obrigado"
    assert "reabrimos a sua reclamação" in thanks.text and thanks.fits_the_screen
    assert again.heading == "Já respondido"
    assert broken.heading == "Este link não funciona"

    # what the browser sent was recorded, once, as the customer's answer
    checks = await http.get(
        f"{p.url('followup')}/satisfaction-checks", params={"complaint_id": cid}
    )
    assert checks.json()["items"][0]["status"] == "answered"
    events = await p.topic_events("complaints.followup.v2", 4)
    [recorded] = [e for e in events if e.type == "SatisfactionRecorded"]
    assert (recorded.payload.score, recorded.payload.solved, recorded.payload.nps) == (2, False, 3)
    assert recorded.payload.comment == "Continua avariada <b>já</b>"  # text, not markup
    # the statuses a browser gets with those pages
    used = await http.get(link.group(0), headers=BROWSER)
    assert used.status_code == 409 and "Já respondido" in used.text
    assert used.headers["cache-control"] == "no-store"
    tampered = await http.get(link.group(0)[:-3] + "AAA", headers=BROWSER)
    assert tampered.status_code == 404 and tampered.headers["content-type"].startswith("text/html")
    # API clients still get JSON
    api = await http.get(link.group(0))
    assert api.status_code == 409 and api.headers["content-type"] == "application/problem+json"


async def test_a_form_with_a_wrong_answer_comes_back_saying_what_to_fix(
    start_platform: StartPlatform, smtp, followup_policy, http: httpx.AsyncClient
):
    p, clock, inbox = await start_loop(start_platform, smtp, followup_policy)
    cid = await submit(p, http, "rui@example.pt")
    await resolve_case(http, p.url("resolution"), cid)
    clock.advance(3 * DAY + timedelta(minutes=1))
    body = (await mail(inbox, "rui@example.pt", "Como correu?")).get_content()
    token = re.search(r"/surveys/(\S+)", body).group(1)  # type: ignore[union-attr]
    url = f"{p.url('followup')}/surveys/{token}"
    form = {**BROWSER, "Content-Type": "application/x-www-form-urlencoded"}
    wrong = await http.post(url, content="score=9&solved=true&comment=ok", headers=form)
    assert wrong.status_code == 422 and 'role="alert"' in wrong.text
    assert "grau de satisfação" in wrong.text  # names the question to fix
    assert 'value="true" required checked' in wrong.text  # and keeps the other answers
    right = await http.post(url, content="score=5&solved=true&comment=ok", headers=form)
    assert right.status_code == 201 and "Obrigado pelas suas respostas" in right.text
