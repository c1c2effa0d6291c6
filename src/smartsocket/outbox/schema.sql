-- SmartSocket transactional outbox (PostgreSQL >= 13). Idempotent: safe to apply again.
--
-- Applications insert rows in their own transaction; SmartSocket's consumer publishes each row
-- after the commit and deletes it in the transaction that read it.
--
-- Order: a BEFORE INSERT trigger takes a transaction-scoped advisory lock on the row's room and
-- only then draws the row's id. A second transaction writing to the same room waits at its
-- insert until the first one commits or rolls back, so within one room id order is commit order
-- and a lower id can never become visible after a higher one. Rooms do not wait for each other
-- (except on a 32-bit hash collision, which only costs a wait). Insert outbox rows late in the
-- transaction: the lock is held until commit.

CREATE OR REPLACE FUNCTION smartsocket_outbox_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 0x5350 ('SP'): our class of advisory locks, apart from the application's one-key locks.
    PERFORM pg_advisory_xact_lock(21328, hashtext(NEW.room));
    NEW.id := nextval('smartsocket_outbox_id_seq');
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION smartsocket_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Delivered only on commit, and folded to one per transaction: a wake-up, not a payload.
    PERFORM pg_notify('smartsocket_outbox', '');
    RETURN NULL;
END
$$;

-- Created once: applying the file again takes no lock on a table that is in use.
DO $outbox$
BEGIN
    IF to_regclass('smartsocket_outbox') IS NOT NULL THEN
        RETURN;
    END IF;

    CREATE SEQUENCE smartsocket_outbox_id_seq;

    CREATE TABLE smartsocket_outbox (
        -- No default: the trigger draws it after taking the room lock (a default is drawn before
        -- BEFORE triggers run, which would let ids and commits disagree).
        id          bigint PRIMARY KEY,
        room        text NOT NULL CHECK (room <> ''),
        event       text NOT NULL CHECK (event <> '' AND left(event, 1) <> '$'),
        data        jsonb NOT NULL DEFAULT 'null'::jsonb,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );

    ALTER SEQUENCE smartsocket_outbox_id_seq OWNED BY smartsocket_outbox.id;

    CREATE TRIGGER smartsocket_outbox_before_insert
        BEFORE INSERT ON smartsocket_outbox
        FOR EACH ROW EXECUTE FUNCTION smartsocket_outbox_before_insert();

    CREATE TRIGGER smartsocket_outbox_notify
        AFTER INSERT ON smartsocket_outbox
        FOR EACH STATEMENT EXECUTE FUNCTION smartsocket_outbox_notify();
END
$outbox$;
