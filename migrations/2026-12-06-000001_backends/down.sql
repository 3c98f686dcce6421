DROP TABLE replicate_webhooks;
