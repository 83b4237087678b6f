"""Locust users for the notes API: a realistic mix, every response checked.

Each user works on the notes it created itself, so nothing 404s or 412s by accident: reads by
id and list pages dominate, with creates, updates under If-Match, deletes and stats beside
them. A response with the wrong status or shape counts as a failure, never as a success.

Every write carries an Idempotency-Key and is retried with the same key (and body) after an
answer that leaves its fate unknown (no answer, 502, 503, 504): the retry returns the first
outcome if the write had committed, so a retried POST never creates a second note. Each
attempt is recorded as what it was: a 502 is a failure, its retry is listed as "(retry)".

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080 -u 50 -r 10 -t 30s

The defaults of those options are in pyproject.toml's [tool.locust]. It imports the stack's
harness (`loadtest.harness`: loopback only, progress lines, thresholds), so a bare `locust`
run is judged like `make loadtest`, which loads the harness beside any LOCUSTFILE.
"""

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, between, task
from locust.contrib.fasthttp import ResponseContextManager

from loadtest import harness  # noqa: F401 (registers the loopback guard, progress, verdict)

NOTE_FIELDS = {"id", "text", "completed", "created_at", "updated_at"}
SEED_NOTES = 5
# Answers after which a write may or may not have happened; 0 is "no answer" in Locust.
RETRYABLE = {0, 502, 503, 504}
WRITE_ATTEMPTS = 4


def _header(response: ResponseContextManager, name: str) -> str:
    headers = response.headers
    return str(headers.get(name) or "") if headers is not None else ""


def _note_ok(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == NOTE_FIELDS and isinstance(body["id"], int)


class NotesUser(FastHttpUser):
    """One client of the API, keeping the ids and ETags of the notes it created."""

    wait_time = between(0, 0.05)

    def on_start(self) -> None:
        """Create a few notes to read and change."""
        self.notes: dict[int, str] = {}
        for _ in range(SEED_NOTES):
            self.create_note()

    def _expect(self, response: ResponseContextManager, status: int) -> Any:
        """Fail the request unless it has `status`; return the JSON body (or None)."""
        if response.status_code != status:
            response.failure(f"expected {status}, got {response.status_code}: {response.text}")
            return None
        if status == 204:
            return None
        try:
            return response.json()
        except ValueError:
            response.failure("response body is not JSON")
            return None

    def _write(
        self,
        method: str,
        path: str,
        name: str,
        status: int,
        check: Callable[[ResponseContextManager, Any], None],
        **kwargs: Any,
    ) -> None:
        """Send a write with an Idempotency-Key, retried with it while its fate is unknown;
        `check` judges the final answer (with its JSON body) while it can still fail it."""
        headers = {**kwargs.pop("headers", {}), "Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(WRITE_ATTEMPTS):
            label = name if attempt == 0 else f"{name} (retry)"
            with self.client.request(
                method, path, name=label, headers=headers, catch_response=True, **kwargs
            ) as response:
                if response.status_code in RETRYABLE and attempt + 1 < WRITE_ATTEMPTS:
                    response.failure(f"{response.status_code}: retried with the same key")
                else:
                    body = self._expect(response, status)
                    if body is not None or status == 204:
                        check(response, body)
                    return
            time.sleep(0.1 * 2**attempt)

    @task(10)
    def create_note(self) -> None:
        """POST a note; 201 with the note, its Location and ETag."""
        text = f"note {random.randrange(10**9)}"  # noqa: S311 (test data)

        def check(response: ResponseContextManager, body: Any) -> None:
            if not _note_ok(body) or body["text"] != text:
                response.failure(f"unexpected note: {body}")
            elif _header(response, "Location") != f"/api/v1/notes/{body['id']}":
                response.failure("missing or wrong Location")
            else:
                self.notes[body["id"]] = _header(response, "ETag")

        self._write("POST", "/api/v1/notes", "/api/v1/notes", 201, check, json={"text": text})

    @task(50)
    def read_note(self) -> None:
        """GET one of our notes by id."""
        if not self.notes:
            return
        note_id = random.choice(list(self.notes))  # noqa: S311
        with self.client.get(
            f"/api/v1/notes/{note_id}", name="/api/v1/notes/{note_id}", catch_response=True
        ) as response:
            body = self._expect(response, 200)
            if body is not None and (not _note_ok(body) or body["id"] != note_id):
                response.failure(f"unexpected note: {body}")

    @task(15)
    def list_notes(self) -> None:
        """Walk up to three pages of the list with the cursor."""
        params: dict[str, Any] = {"limit": 20}
        if random.random() < 0.3:  # noqa: S311
            params["completed"] = "true"
        for _ in range(3):
            with self.client.get(
                "/api/v1/notes", params=params, name="/api/v1/notes?page", catch_response=True
            ) as response:
                page = self._expect(response, 200)
                if page is None:
                    return
                items = page.get("items") if isinstance(page, dict) else None
                if not isinstance(items, list) or not all(_note_ok(item) for item in items):
                    response.failure("page without a valid items list")
                    return
                ids = [item["id"] for item in items]
                if ids != sorted(ids) or len(ids) > 20:
                    response.failure("page not in ascending id order or too long")
                    return
                if not page.get("next_cursor"):
                    return
                params["cursor"] = page["next_cursor"]

    @task(8)
    def update_note(self) -> None:
        """PATCH one of our notes with its current ETag: 200 and a new ETag."""
        if not self.notes:
            return
        note_id = random.choice(list(self.notes))  # noqa: S311

        def check(response: ResponseContextManager, body: Any) -> None:
            etag = _header(response, "ETag")
            if not _note_ok(body) or not etag:
                response.failure("PATCH without a note or a new ETag")
            else:
                self.notes[note_id] = etag

        self._write(
            "PATCH",
            f"/api/v1/notes/{note_id}",
            "/api/v1/notes/{note_id} PATCH",
            200,
            check,
            json={"completed": random.random() < 0.5},  # noqa: S311
            headers={"If-Match": self.notes[note_id]},
        )

    @task(3)
    def delete_note(self) -> None:
        """DELETE one of our notes (keeping a few to read)."""
        if len(self.notes) <= SEED_NOTES:
            return
        note_id = random.choice(list(self.notes))  # noqa: S311
        etag = self.notes.pop(note_id)
        self._write(
            "DELETE",
            f"/api/v1/notes/{note_id}",
            "/api/v1/notes/{note_id} DELETE",
            204,
            lambda response, body: None,
            headers={"If-Match": etag},
        )

    @task(4)
    def stats(self) -> None:
        """GET the counts; they must add up."""
        with self.client.get(
            "/api/v1/notes/stats", name="/api/v1/notes/stats", catch_response=True
        ) as response:
            body = self._expect(response, 200)
            if body is None:
                return
            if not isinstance(body, dict) or body.get("total") != body.get(
                "completed", -1
            ) + body.get("open", -1):
                response.failure(f"stats do not add up: {body}")
