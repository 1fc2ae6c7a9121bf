"""The survey as an HTML page for the customer's browser: one form, in their language, that
works without JavaScript, on a phone and with a screen reader (labels, fieldsets, ``lang``).
Every text inserted is escaped; the page loads nothing from elsewhere."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
:root { color-scheme: light; }
body { font: 1.0625rem/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; background: #f4f5f7; color: #1b1f24; }
main { max-width: 36rem; margin: 0 auto; padding: 1.25rem; background: #fff; min-height: 100vh; }
h1 { font-size: 1.4rem; line-height: 1.3; }
fieldset { border: 1px solid #c9ced6; border-radius: .5rem; margin: 0 0 1.25rem; padding: .75rem; }
legend { font-weight: 600; padding: 0 .25rem; }
.scale { display: flex; flex-wrap: wrap; gap: .5rem; }
.scale label, .choice label { display: inline-flex; align-items: center; gap: .35rem;
  min-width: 2.75rem; min-height: 2.75rem; padding: 0 .6rem; border: 1px solid #8a93a0;
  border-radius: .4rem; cursor: pointer; }
.ends { display: flex; justify-content: space-between; font-size: .9rem; color: #444c56; }
textarea { width: 100%; box-sizing: border-box; min-height: 6rem; font: inherit; }
button { font: inherit; font-weight: 600; padding: .75rem 1.5rem; min-height: 2.75rem;
  border: 0; border-radius: .4rem; background: #0b5cad; color: #fff; cursor: pointer; }
:focus-visible { outline: 3px solid #f0a500; outline-offset: 2px; }
.error { border-left: 4px solid #b3261e; padding: .5rem .75rem; background: #fdecea; }
.note { color: #444c56; font-size: .95rem; }
"""


def document(lang: str, title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="{escape(lang)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def message_page(lang: str, title: str, text: str) -> str:
    """A page that says one thing: thank you, already answered, expired, a broken link."""
    return document(lang, title, f"<h1>{escape(title)}</h1>\n<p>{escape(text)}</p>")


def _scale(name: str, low: int, high: int, chosen: object, required: bool) -> str:
    options = []
    for v in range(low, high + 1):
        checked = " checked" if str(chosen) == str(v) else ""
        req = " required" if required and v == low else ""
        options.append(
            f'<label><input type="radio" name="{name}" value="{v}"{checked}{req}> {v}</label>'
        )
    return '<div class="scale">' + "".join(options) + "</div>"


def survey_page(
    lang: str,
    texts: dict[str, Any],
    page: dict[str, Any],
    *,
    reference: str,
    expires: str,
    action: str,
    given: dict[str, str] | None = None,
    errors: list[str] | None = None,
) -> str:
    """The form: score (1 to 5), solved (yes/no), comment, NPS (0 to 10); ``given`` refills it
    after an error."""
    g = given or {}
    heading = str(page["heading"]).format(reference=reference)
    error = (
        f'<div class="error" role="alert"><p><strong>{escape(page["error_title"])}</strong></p>'
        + "".join(f"<p>{escape(e)}</p>" for e in errors)
        + "</div>"
        if errors
        else ""
    )
    solved = g.get("solved")
    body = f"""<h1>{escape(heading)}</h1>
{error}
<p class="note">{escape(page["intro"])}</p>
<form method="post" action="{escape(action)}">
<fieldset>
<legend>{escape(texts["score"])} *</legend>
{_scale("score", 1, 5, g.get("score"), True)}
<div class="ends" aria-hidden="true"><span>1 = {escape(page["very_unhappy"])}</span>
<span>5 = {escape(page["very_happy"])}</span></div>
</fieldset>
<fieldset class="choice">
<legend>{escape(texts["solved"])} *</legend>
<label><input type="radio" name="solved" value="true" required\
{" checked" if solved == "true" else ""}> {escape(page["yes"])}</label>
<label><input type="radio" name="solved" value="false"\
{" checked" if solved == "false" else ""}> {escape(page["no"])}</label>
</fieldset>
<fieldset>
<legend><label for="comment">{escape(texts["comment"])}</label></legend>
<textarea id="comment" name="comment" maxlength="2000">{escape(g.get("comment", ""))}</textarea>
</fieldset>
<fieldset>
<legend>{escape(texts["nps"])}</legend>
{_scale("nps", 0, 10, g.get("nps"), False)}
<div class="ends" aria-hidden="true"><span>0 = {escape(page["not_likely"])}</span>
<span>10 = {escape(page["very_likely"])}</span></div>
</fieldset>
<p><button type="submit">{escape(page["submit"])}</button></p>
</form>
<p class="note">{escape(str(page["until"]).format(expires=expires))}</p>"""
    return document(lang, heading, body)
