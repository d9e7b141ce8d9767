-- One Segment source ("web_app") as Segment's warehouse loader lays it out in PostgreSQL.
--
-- Every call lands in the table of its type (identifies, tracks, pages ...); each track also lands, with the same
-- `id`, in a table named after the event (order_completed, signed_up ...) that has one column per property;
-- `users` holds the latest traits per user (upserted on the user id, which is its `id`). Keys are snake_cased,
-- nested objects flattened with `_` (context.library.name -> context_library_name, traits.mailingLists.<listId>
-- -> mailing_lists_<listid>), arrays stringified. `uuid`/`uuid_ts` are the loader's own columns; `received_at`
-- is when Segment received the call and the column to replicate on incrementally.
--
-- tests/warehouse/seed.py runs this file, then loads the calls the way the loader would.

DROP SCHEMA IF EXISTS web_app CASCADE;
CREATE SCHEMA web_app;

CREATE TABLE web_app.identifies (
    id varchar(1024) NOT NULL PRIMARY KEY,
    anonymous_id text,
    user_id text,
    context_ip text,
    context_library_name text,
    context_library_version text,
    context_locale text,
    context_user_agent text,
    original_timestamp timestamp with time zone,
    received_at timestamp with time zone,
    sent_at timestamp with time zone,
    "timestamp" timestamp with time zone,
    uuid bigint,
    uuid_ts timestamp with time zone,
    -- traits
    email text,
    first_name text,
    last_name text,
    company_name text,
    plan text,
    seats bigint,
    is_admin boolean,
    trial_ends_at timestamp with time zone,
    lifetime_value numeric,
    favorite_color text,
    mailing_lists_cm06f5v0e45nf0ml5754o9cix boolean,
    mailing_lists_cm06f5v0e45nf0ml5754o9ciy boolean
);

-- The latest traits of each user: `id` is the user id; there is no anonymous_id and no context.
CREATE TABLE web_app.users (
    id varchar(1024) NOT NULL PRIMARY KEY,
    received_at timestamp with time zone,
    uuid bigint,
    uuid_ts timestamp with time zone,
    email text,
    first_name text,
    last_name text,
    company_name text,
    plan text,
    seats bigint,
    is_admin boolean,
    trial_ends_at timestamp with time zone,
    lifetime_value numeric,
    favorite_color text,
    mailing_lists_cm06f5v0e45nf0ml5754o9cix boolean,
    mailing_lists_cm06f5v0e45nf0ml5754o9ciy boolean
);

-- Every track call; no property columns. `event` is the slug of `event_text`, the name as it was sent.
CREATE TABLE web_app.tracks (
    id varchar(1024) NOT NULL PRIMARY KEY,
    anonymous_id text,
    user_id text,
    context_ip text,
    context_library_name text,
    context_library_version text,
    context_page_path text,
    context_traits_email text,
    event text,
    event_text text,
    original_timestamp timestamp with time zone,
    received_at timestamp with time zone,
    sent_at timestamp with time zone,
    "timestamp" timestamp with time zone,
    uuid bigint,
    uuid_ts timestamp with time zone
);

-- One table per event: the tracks columns plus one column per property.
CREATE TABLE web_app.order_completed (LIKE web_app.tracks INCLUDING ALL);
ALTER TABLE web_app.order_completed
    ADD COLUMN order_id text,
    ADD COLUMN revenue numeric,
    ADD COLUMN currency text,
    ADD COLUMN coupon text,
    ADD COLUMN products text;  -- an array property, stringified by the loader

CREATE TABLE web_app.signed_up (LIKE web_app.tracks INCLUDING ALL);
ALTER TABLE web_app.signed_up
    ADD COLUMN plan text,
    ADD COLUMN referrer text,
    ADD COLUMN trial_days bigint;

CREATE TABLE web_app.logged_in (LIKE web_app.tracks INCLUDING ALL);
ALTER TABLE web_app.logged_in
    ADD COLUMN method text;

CREATE TABLE web_app.clicked_upgrade (LIKE web_app.tracks INCLUDING ALL);
ALTER TABLE web_app.clicked_upgrade
    ADD COLUMN button text;

CREATE TABLE web_app.viewed_pricing (LIKE web_app.tracks INCLUDING ALL);
ALTER TABLE web_app.viewed_pricing
    ADD COLUMN plan_shown text;

CREATE TABLE web_app.pages (
    id varchar(1024) NOT NULL PRIMARY KEY,
    anonymous_id text,
    user_id text,
    context_ip text,
    context_library_name text,
    context_library_version text,
    context_user_agent text,
    name text,
    path text,
    referrer text,
    title text,
    url text,
    original_timestamp timestamp with time zone,
    received_at timestamp with time zone,
    sent_at timestamp with time zone,
    "timestamp" timestamp with time zone,
    uuid bigint,
    uuid_ts timestamp with time zone
);
