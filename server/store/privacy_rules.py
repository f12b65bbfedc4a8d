"""The redaction rules issue 20 (item 8) added: prose passwords, dates of birth, passport and national
id numbers, 7-digit phone numbers and UK National Insurance numbers (privacy.py applies them).

Free text has no syntax that says "this is a password" or "this is a passport number", so these
rules (but the last two) fire only after a keyword that names the thing ("my password is ...",
"pwd: ...", "DOB 1990-04-12", "born on 12/04/1990", "passport no. X1234567", "national insurance
number ..."); the keyword stays and the value becomes a tag. A bare date, year or version number
is left alone.

Linear time, like every rule in privacy.py: each pattern is a fixed keyword alternation (or a
digit/letter shape) followed only by bounded quantifiers (`{m,n}`), with adjacent quantified
parts over disjoint classes, so one start reads a bounded number of characters whatever follows;
tests/server/store/test_privacy_linear.py times adversarial strings per rule.
"""

from __future__ import annotations

# what a value is not, after "password is" / "pin is": words of sentences about passwords
_NOT_A_PASSWORD = (
    r"(?!(?:a|an|the|not|no|now|required|incorrect|invalid|wrong|too|very|correct|reset|changed|set|"
    r"empty|missing|expired|strong|weak|needed|stored|hashed|encrypted|protected|used|case|only|still|"
    r"different|same|secure|long|short|saved|sent|shown|hidden|optional|mandatory)\b)"
)

#: prose and config passwords: `password: x`, `pwd=x`, `"password": "x"`, `my password is x`
PASSWORD = (
    r"(?i)(?<![A-Za-z0-9])(pass(?:word|wd|phrase|code)|pwd|pw|pin(?: ?code)?)"
    r"([\"']?\s{0,4}[:=]\s{0,4}|\s{1,4}(?:is|was)[\s:]{1,4})"
    rf"{_NOT_A_PASSWORD}"
    r"([\"'`]?)[^\s\"'`]{1,128}"
)

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]{0,6}\.?"
_DATE = (
    r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"
    r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s(?:of\s)?{_MONTH},?\s\d{{4}}"
    rf"|{_MONTH}\s\d{{1,2}}(?:st|nd|rd|th)?,?\s\d{{4}})"
)
_IS = r"(?:(?:is|was)[\s:]{1,3})?"

#: a full date after a birth keyword: `DOB 1990-04-12`, `born on 12/04/1990`, `date of birth: April 12, 1990`
DATE_OF_BIRTH = (
    r"(?i)(?<![A-Za-z0-9])(dob|d\.o\.b\.?|date\sof\sbirth|birth\s?date|birthday|born(?:\son)?)"
    rf"([\s:=,-]{{1,6}}{_IS}){_DATE}(?!\d)"
)

#: 6-9 letters and digits (at least one digit) after `passport` (`no.`, `number`, `#`)
PASSPORT = (
    r"(?i)(?<![A-Za-z0-9])(passport(?:\s?(?:no\.?|number|num|nr\.?|#))?)"
    rf"([\s:#=]{{1,4}}{_IS})(?=[A-Za-z]{{0,8}}\d)[A-Za-z0-9]{{6,9}}(?![A-Za-z0-9])"
)

_ID_WORDS = (
    r"(?:(?:national\s(?:id(?:entity)?|insurance|identification)|identity\s(?:card|document)|id\scard"
    r"|personal\sid(?:entification)?|tax\sid(?:entification)?|social\sinsurance)"
    r"(?:\s(?:number|no\.?|nr\.?|code|#))?"
    r"|id\s(?:number|no\.?|nr\.?)|aadhaar|nric|pesel|personnummer|codice\sfiscale|steuer-?id|bsn|cpf|curp|nino)"
)
#: an id number after a word naming a national id document (NINO, SIN, Aadhaar, PESEL, ...)
NATIONAL_ID = (
    rf"(?i)(?<![A-Za-z0-9])({_ID_WORDS})([\s:#=]{{1,4}}{_IS})(?=[A-Za-z./-]{{0,6}}\d)"
    r"(?:\d{2,6}(?:[ .-]\d{2,6}){1,4}|[A-Za-z0-9][A-Za-z0-9./-]{3,18}[A-Za-z0-9])(?![A-Za-z0-9])"
)

#: a local phone number without an area code: 555-1234 (not 1990-2004, 1.2.3, 978-3161484100)
PHONE_7 = r"(?<![\w.+/-])\d{3}-\d{4}(?![\w/-]|\.\d)"

#: a UK National Insurance number: QQ 12 34 56 C, QQ123456C (capitals, as printed)
NINO = r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"

#: (name, pattern, replacement), run before privacy.py's rules: a passport number must not become [phone]
KEYWORD_RULES: list[tuple[str, str, str]] = [
    ("password", PASSWORD, r"\1\2\3[password]"),
    ("date-of-birth", DATE_OF_BIRTH, r"\1\2[dob]"),
    ("passport", PASSPORT, r"\1\2[passport]"),
    ("national-id", NATIONAL_ID, r"\1\2[national-id]"),
]
#: (name, pattern, replacement), run after privacy.py's rules (after the longer phone numbers)
TRAILING_RULES: list[tuple[str, str, str]] = [
    ("phone-7", PHONE_7, "[phone]"),
    ("nino", NINO, "[national-id]"),
]
