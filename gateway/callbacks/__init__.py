"""Webhook callbacks: signed (Standard Webhooks), SSRF-checked, delivered with retries."""
