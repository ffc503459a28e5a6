-- Runs once, on the first start of an empty data volume, as POSTGRES_USER.
-- One database per service that owns state (config.settings.DATABASE_SERVICES);
-- `oms init` then applies the migrations and seeds the stock catalogue.
CREATE DATABASE oms_orders;
CREATE DATABASE oms_inventory;
CREATE DATABASE oms_payments;
