//! Every enumeration stored in a `TEXT` column, in one leaf module that
//! imports nothing else of the domain: rows (`rows.rs`) and the modules
//! that own each table use them without importing each other. Behaviour
//! (e.g. which generation status may follow which) lives with the owning
//! module (`generations::status`).

use crate::pg_enum::pg_enum;

pg_enum! {
    /// A generation's place in its lifecycle (`generations::Status`, with
    /// the table of moves).
    pub enum GenerationStatus {
        Queued = "queued",
        Rendering = "rendering",
        Transcoding = "transcoding",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
    }
}

pg_enum! {
    /// What a render model makes and a generation is.
    pub enum MediaKind {
        Image = "image",
        Video = "video",
    }
}

pg_enum! {
    #[derive(PartialOrd, Ord)]
    pub enum Resolution {
        R480p = "480p",
        R720p = "720p",
        R1080p = "1080p",
    }
}

pg_enum! {
    /// What a user may do: admins also reach the admin API.
    pub enum Role {
        User = "user",
        Admin = "admin",
    }
}

pg_enum! {
    /// A ledger entry's operation.
    pub enum EntryKind {
        Grant = "grant",
        Purchase = "purchase",
        Hold = "hold",
        Capture = "capture",
        Release = "release",
        Clawback = "clawback",
        Expire = "expire",
        Adjustment = "adjustment",
    }
}

pg_enum! {
    /// Where a credit grant came from.
    pub enum GrantSource {
        Signup = "signup",
        Purchase = "purchase",
        Subscription = "subscription",
        Admin = "admin",
        Promo = "promo",
    }
}

pg_enum! {
    /// A credit hold: open until its generation ends, then captured or
    /// released, once.
    pub enum HoldStatus {
        Open = "open",
        Captured = "captured",
        Released = "released",
    }
}

pg_enum! {
    /// An order's state (`orders::Status`, with the table of moves).
    pub enum OrderStatus {
        Pending = "pending",
        Paid = "paid",
        Failed = "failed",
        Canceled = "canceled",
        Refunded = "refunded",
        PartiallyRefunded = "partially_refunded",
        Disputed = "disputed",
    }
}

pg_enum! {
    /// How an order is paid: once, or by a subscription that renews.
    pub enum OrderMode {
        Payment = "payment",
        Subscription = "subscription",
    }
}

pg_enum! {
    /// A product sold once (a credit pack) or as a monthly plan.
    pub enum ProductKind {
        Pack = "pack",
        Plan = "plan",
    }
}

pg_enum! {
    /// Where a received Stripe event is in its settlement.
    pub enum StripeEventStatus {
        Received = "received",
        Processed = "processed",
        Ignored = "ignored",
        Failed = "failed",
    }
}

pg_enum! {
    /// Where an uploaded asset is on its way in (`assets`).
    pub enum AssetStatus {
        AwaitingUpload = "awaiting_upload",
        Processing = "processing",
        Ready = "ready",
        Rejected = "rejected",
    }
}

pg_enum! {
    /// Where a model's renders run. Each has its own render queue
    /// (`render:<name>`), so each kind of host takes only its own work.
    pub enum BackendKind {
        /// ffmpeg on the worker's CPU: development, tests, demos.
        Synthetic = "synthetic",
        /// The operator's ComfyUI servers on GPU hosts.
        ComfyUi = "comfyui",
        /// Replicate's hosted GPUs, through its HTTP API.
        Replicate = "replicate",
    }
}
