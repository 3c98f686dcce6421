// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        scopes -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    assets (id) {
        id -> Uuid,
        user_id -> Uuid,
        kind -> Text,
        status -> Text,
        filename -> Text,
        content_type -> Text,
        byte_size -> Int8,
        width -> Nullable<Int4>,
        height -> Nullable<Int4>,
        duration_seconds -> Nullable<Float8>,
        error -> Nullable<Text>,
        output -> Nullable<Jsonb>,
        upload_expires_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        purged_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        ready_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    credit_accounts (user_id) {
        user_id -> Uuid,
        balance -> Int8,
        held -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    credit_entries (id) {
        id -> Int8,
        user_id -> Uuid,
        kind -> Text,
        amount -> Int8,
        held_delta -> Int8,
        balance_after -> Int8,
        held_after -> Int8,
        idempotency_key -> Text,
        grant_id -> Nullable<Uuid>,
        hold_id -> Nullable<Uuid>,
        order_id -> Nullable<Uuid>,
        generation_id -> Nullable<Uuid>,
        stripe_event_id -> Nullable<Text>,
        memo -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    credit_grants (id) {
        id -> Uuid,
        user_id -> Uuid,
        source -> Text,
        amount -> Int8,
        remaining -> Int8,
        expires_at -> Nullable<Timestamptz>,
        expired_at -> Nullable<Timestamptz>,
        order_id -> Nullable<Uuid>,
        stripe_event_id -> Nullable<Text>,
        memo -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    credit_holds (id) {
        id -> Uuid,
        user_id -> Uuid,
        generation_id -> Nullable<Uuid>,
        amount -> Int8,
        status -> Text,
        created_at -> Timestamptz,
        closed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    daily_stats (day) {
        day -> Date,
        new_users -> Int8,
        active_users -> Int8,
        orders_paid -> Int8,
        revenue -> Jsonb,
        credits_purchased -> Int8,
        credits_granted -> Int8,
        credits_captured -> Int8,
        credits_released -> Int8,
        credits_clawed_back -> Int8,
        credits_expired -> Int8,
        generations_created -> Int8,
        generations_succeeded -> Int8,
        generations_failed -> Int8,
        generations_canceled -> Int8,
        queue_wait_p50_seconds -> Nullable<Float8>,
        queue_wait_p95_seconds -> Nullable<Float8>,
        render_p50_seconds -> Nullable<Float8>,
        render_p95_seconds -> Nullable<Float8>,
        render_seconds_total -> Float8,
        by_model -> Jsonb,
        time_zone -> Text,
        computed_at -> Timestamptz,
    }
}

diesel::table! {
    email_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        purpose -> Text,
        email -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    generation_inputs (generation_id, position) {
        generation_id -> Uuid,
        position -> Int2,
        asset_id -> Uuid,
    }
}

diesel::table! {
    generations (id) {
        id -> Uuid,
        user_id -> Uuid,
        model -> Text,
        prompt -> Text,
        negative_prompt -> Nullable<Text>,
        resolution -> Text,
        duration_seconds -> Nullable<Int4>,
        seed -> Nullable<Int8>,
        status -> Text,
        progress -> Int4,
        stage -> Nullable<Text>,
        priority -> Int4,
        cost -> Int8,
        idempotency_key -> Nullable<Text>,
        attempts -> Int4,
        backend -> Text,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        queued_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        heartbeat_at -> Nullable<Timestamptz>,
        kind -> Text,
        cancel_requested_at -> Nullable<Timestamptz>,
        worker -> Nullable<Text>,
        backend_url -> Nullable<Text>,
        backend_job_id -> Nullable<Text>,
        media_expired_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    mails (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        to_address -> Text,
        subject -> Text,
        body_text -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    order_items (id) {
        id -> Uuid,
        order_id -> Uuid,
        product_id -> Text,
        product_name -> Text,
        quantity -> Int4,
        unit_price_cents -> Int8,
        unit_credits -> Int8,
        currency -> Text,
    }
}

diesel::table! {
    orders (id) {
        id -> Uuid,
        user_id -> Uuid,
        status -> Text,
        total_cents -> Int8,
        currency -> Text,
        credits -> Int8,
        refunded_cents -> Int8,
        stripe_checkout_session_id -> Nullable<Text>,
        stripe_payment_intent_id -> Nullable<Text>,
        stripe_subscription_id -> Nullable<Text>,
        checkout_url -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        mode -> Text,
        stripe_customer_id -> Nullable<Text>,
        credits_clawed_back -> Int8,
        disputed_credits -> Int8,
    }
}

diesel::table! {
    products (id) {
        id -> Text,
        kind -> Text,
        name -> Text,
        credits -> Int8,
        price_cents -> Int8,
        currency -> Text,
        stripe_price_id -> Nullable<Text>,
        active -> Bool,
        sort_order -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    render_model_prices (model_id, resolution) {
        model_id -> Text,
        resolution -> Text,
        credits -> Int8,
        credits_per_second -> Int8,
    }
}

diesel::table! {
    render_models (id) {
        id -> Text,
        kind -> Text,
        name -> Text,
        workflow -> Text,
        max_duration_seconds -> Nullable<Int4>,
        default_duration_seconds -> Nullable<Int4>,
        fps -> Int4,
        active -> Bool,
        sort_order -> Int4,
        created_at -> Timestamptz,
        render_timeout_seconds -> Nullable<Int4>,
        max_attempts -> Nullable<Int4>,
        inputs -> Array<Nullable<Text>>,
        backend -> Text,
    }
}

diesel::table! {
    replicate_webhooks (id) {
        id -> Text,
        prediction_id -> Text,
        generation_id -> Nullable<Uuid>,
        status -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        user_agent -> Nullable<Text>,
        ip_address -> Nullable<Text>,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    stripe_events (id) {
        id -> Text,
        #[sql_name = "type"]
        type_ -> Text,
        livemode -> Bool,
        payload -> Jsonb,
        status -> Text,
        order_id -> Nullable<Uuid>,
        received_at -> Timestamptz,
        processed_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        user_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Text,
        user_id -> Uuid,
        order_id -> Nullable<Uuid>,
        product_id -> Text,
        status -> Text,
        current_period_end -> Nullable<Timestamptz>,
        grant_id -> Nullable<Uuid>,
        canceled_at -> Nullable<Timestamptz>,
        event_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        storage_used_bytes -> Int8,
        email_verified_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        started_at -> Timestamptz,
        duration_ms -> Int4,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
        response_body -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        event_id -> Uuid,
        endpoint_id -> Uuid,
        status -> Text,
        attempts -> Int4,
        manual -> Bool,
        next_attempt_at -> Nullable<Timestamptz>,
        locked_until -> Nullable<Timestamptz>,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Uuid,
        user_id -> Uuid,
        url -> Text,
        description -> Nullable<Text>,
        events -> Array<Nullable<Text>>,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        failing_since -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Uuid,
        user_id -> Uuid,
        event_type -> Text,
        data -> Jsonb,
        body -> Nullable<Text>,
        created_at -> Timestamptz,
        fanned_out_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(assets -> users (user_id));
diesel::joinable!(credit_accounts -> users (user_id));
diesel::joinable!(credit_entries -> credit_accounts (user_id));
diesel::joinable!(credit_entries -> credit_grants (grant_id));
diesel::joinable!(credit_entries -> credit_holds (hold_id));
diesel::joinable!(credit_entries -> generations (generation_id));
diesel::joinable!(credit_entries -> orders (order_id));
diesel::joinable!(credit_grants -> credit_accounts (user_id));
diesel::joinable!(credit_grants -> orders (order_id));
diesel::joinable!(credit_holds -> credit_accounts (user_id));
diesel::joinable!(credit_holds -> generations (generation_id));
diesel::joinable!(email_tokens -> users (user_id));
diesel::joinable!(generation_inputs -> assets (asset_id));
diesel::joinable!(generation_inputs -> generations (generation_id));
diesel::joinable!(generations -> users (user_id));
diesel::joinable!(mails -> users (user_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_items -> products (product_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(render_model_prices -> render_models (model_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(stripe_events -> orders (order_id));
diesel::joinable!(stripe_events -> users (user_id));
diesel::joinable!(subscriptions -> credit_grants (grant_id));
diesel::joinable!(subscriptions -> orders (order_id));
diesel::joinable!(subscriptions -> products (product_id));
diesel::joinable!(subscriptions -> users (user_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::joinable!(webhook_deliveries -> webhook_events (event_id));
diesel::joinable!(webhook_endpoints -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    assets,
    credit_accounts,
    credit_entries,
    credit_grants,
    credit_holds,
    daily_stats,
    email_tokens,
    generation_inputs,
    generations,
    mails,
    order_items,
    orders,
    products,
    refresh_tokens,
    render_model_prices,
    render_models,
    replicate_webhooks,
    sessions,
    stripe_events,
    subscriptions,
    users,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
);
