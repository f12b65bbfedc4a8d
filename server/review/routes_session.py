"""Signing in with a bearer token in a browser: GET /login, POST /login (sets the token cookie), POST /logout.

The cookie is HttpOnly, SameSite=Strict, scoped to the app's path, for 12 hours; `next` only ever
leads back into the app (an absolute or scheme-relative URL elsewhere is replaced by the queue).
POST /logout takes the CSRF token like every other form (every page's sign-out form sends it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse

from probewatch.server.review.auth import TOKEN_COOKIE, csrf_ok
from probewatch.server.review.state import State, base, render, request_identity

router = APIRouter()
COOKIE_MAX_AGE_S = 12 * 3600


def safe_next(request: Request, target: str) -> str:
    """`target` when it is a path inside this app, else the queue."""
    if not target.startswith(base(request) + "/") or target.startswith("//") or "\\" in target:
        return f"{base(request)}/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, state: State, next_: Annotated[str | None, Query(alias="next")] = None):
    return render(request, "login.html", next=next_ or "", error=None, tokens=bool(state.auth.tokens))


@router.post("/login")
def login(
    request: Request,
    state: State,
    token: Annotated[str, Form()] = "",
    next_: Annotated[str, Form(alias="next")] = "",
):
    target = safe_next(request, next_)
    tokens = bool(state.auth.tokens)
    if not tokens or state.auth.token_reviewer(token) is None:
        return render(request, "login.html", 401, next=target, error="unknown token", tokens=tokens)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        TOKEN_COOKIE,
        token.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=f"{base(request)}/",
        max_age=COOKIE_MAX_AGE_S,
    )
    return response


@router.post("/logout")
def logout(request: Request, state: State, csrf: Annotated[str, Form()] = ""):
    """Sign out; a signed-in browser must send its CSRF token (another site must not sign it out)."""
    identity = request_identity(request, state)
    if identity is not None and identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, csrf):
        return PlainTextResponse("sign-out form expired or forged (CSRF token mismatch): reload the page", 403)
    response = RedirectResponse(f"{base(request)}/login", 303)
    response.delete_cookie(TOKEN_COOKIE, path=f"{base(request)}/")
    return response
