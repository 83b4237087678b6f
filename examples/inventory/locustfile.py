"""The inventory's own load: mostly reads, some writes, the admin stats now and then."""

import os
import random

from locust import FastHttpUser, between, task

API_KEY = os.environ.get("INVENTORY_API_KEY", "local-development-key")


class InventoryUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.ids: list[int] = []

    @task(2)
    def create(self) -> None:
        body = {"name": "widget", "owner_email": "owner@example.com", "quantity": 3}
        with self.client.post("/api/v1/items/", json=body, catch_response=True) as response:
            if response.status_code == 201:
                self.ids.append(response.json()["id"])
            else:
                response.failure(f"status {response.status_code}")

    @task(6)
    def read(self) -> None:
        if self.ids:
            self.client.get(
                f"/api/v1/items/{random.choice(self.ids)}", name="/api/v1/items/{item_id}"
            )

    @task(1)
    def list_items(self) -> None:
        self.client.get("/api/v1/items/?limit=10", name="/api/v1/items/")

    @task(1)
    def stats(self) -> None:
        self.client.get("/api/v1/admin/stats", headers={"X-API-Key": API_KEY})
