-- The legacy restaurant schema as the monolith created it, warts included.
--
-- Deliberate legacy traits that the bridge has to cope with:
--   * created_at is timestamptz (written by a DEFAULT), updated_on is a timestamp WITHOUT time zone
--     that the application writes itself with localtimestamp, on INSERT and on every UPDATE;
--   * customers are never deleted, only flagged (is_deleted);
--   * order_items.menu_item_id has no foreign key, so a line may outlive the menu item it names;
--   * no ON DELETE CASCADE anywhere: the application deletes children explicitly;
--   * no CHECK on orders.status: the values 'OPEN', 'PLACED', 'CANCELLED' live in application code;
--   * REPLICA IDENTITY is left at DEFAULT (primary key only in the old image of UPDATE/DELETE).

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    email       varchar(255) NOT NULL,
    full_name   varchar(200) NOT NULL,
    phone       varchar(40),
    preferences jsonb,
    created_at  timestamptz DEFAULT now(),
    updated_on  timestamp without time zone,
    is_deleted  boolean NOT NULL DEFAULT false,
    CONSTRAINT customers_email_key UNIQUE (email)
);

CREATE TABLE customer_addresses (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    label       varchar(40),
    street      varchar(200) NOT NULL,
    city        varchar(100) NOT NULL,
    postal_code varchar(20),
    country     char(2) NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz DEFAULT now()
);
CREATE INDEX customer_addresses_customer_id_idx ON customer_addresses (customer_id);

CREATE TABLE menu_items (
    id           serial PRIMARY KEY,
    name         varchar(120) NOT NULL,
    description  text,
    price        numeric(10, 2) NOT NULL,
    category     varchar(40),
    tags         text[],
    is_available boolean NOT NULL DEFAULT true,
    created_at   timestamptz DEFAULT now(),
    updated_on   timestamp without time zone
);
-- Long descriptions go out of line, uncompressed. An UPDATE that does not touch description then logs
-- it as an "unchanged TOAST" value: Debezium's __debezium_unavailable_value placeholder, pgoutput's 'u'.
ALTER TABLE menu_items ALTER COLUMN description SET STORAGE EXTERNAL;

CREATE TABLE orders (
    id                  bigserial PRIMARY KEY,
    customer_id         bigint NOT NULL REFERENCES customers (id),
    status              varchar(20) NOT NULL DEFAULT 'OPEN',
    delivery_address_id bigint REFERENCES customer_addresses (id),
    placed_at           timestamptz,
    notes               text,
    created_at          timestamptz DEFAULT now(),
    updated_on          timestamp without time zone
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE order_items (
    id           bigserial PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders (id),
    menu_item_id integer NOT NULL,
    quantity     integer NOT NULL,
    unit_price   numeric(10, 2) NOT NULL,
    created_at   timestamptz DEFAULT now()
);
-- Without it, deleting an order (its lines first) would scan order_items twice.
CREATE INDEX order_items_order_id_idx ON order_items (order_id);
