-- serlua schema for MySQL/MariaDB: Kamailio 5.x's tables, created only where
-- missing so that an existing Kamailio database is used unchanged. Indexes are
-- declared inside CREATE TABLE (MySQL has no CREATE INDEX IF NOT EXISTS).
-- InnoDB (the default engine) is required: usrloc batches are transactions.
-- The version rows are Kamailio's (its modules check them at start); a
-- row that exists already is left as it is.

-- version (Kamailio module core (standard), table version 1)
CREATE TABLE IF NOT EXISTS `version` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `table_name` VARCHAR(32) NOT NULL,
    `table_version` INT(11) DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (`table_name`)
);
INSERT INTO version (table_name, table_version) SELECT 'version', 1 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'version');

-- subscriber (Kamailio module auth_db, table version 7)
CREATE TABLE IF NOT EXISTS `subscriber` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `username` VARCHAR(64) DEFAULT '' NOT NULL,
    `domain` VARCHAR(64) DEFAULT '' NOT NULL,
    `password` VARCHAR(64) DEFAULT '' NOT NULL,
    `ha1` VARCHAR(128) DEFAULT '' NOT NULL,
    `ha1b` VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT account_idx UNIQUE (`username`, `domain`),
    INDEX username_idx (`username`)
);
INSERT INTO version (table_name, table_version) SELECT 'subscriber', 7 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'subscriber');

-- location (Kamailio module usrloc, table version 9)
CREATE TABLE IF NOT EXISTS `location` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `ruid` VARCHAR(64) DEFAULT '' NOT NULL,
    `username` VARCHAR(64) DEFAULT '' NOT NULL,
    `domain` VARCHAR(64) DEFAULT NULL,
    `contact` VARCHAR(512) DEFAULT '' NOT NULL,
    `received` VARCHAR(128) DEFAULT NULL,
    `path` VARCHAR(512) DEFAULT NULL,
    `expires` DATETIME DEFAULT '2030-05-28 21:32:15' NOT NULL,
    `q` FLOAT(10,2) DEFAULT 1.0 NOT NULL,
    `callid` VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
    `cseq` INT(11) DEFAULT 1 NOT NULL,
    `last_modified` DATETIME DEFAULT '2000-01-01 00:00:01' NOT NULL,
    `flags` INT(11) DEFAULT 0 NOT NULL,
    `cflags` INT(11) DEFAULT 0 NOT NULL,
    `user_agent` VARCHAR(255) DEFAULT '' NOT NULL,
    `socket` VARCHAR(64) DEFAULT NULL,
    `methods` INT(11) DEFAULT NULL,
    `instance` VARCHAR(255) DEFAULT NULL,
    `reg_id` INT(11) DEFAULT 0 NOT NULL,
    `server_id` INT(11) DEFAULT 0 NOT NULL,
    `connection_id` INT(11) DEFAULT 0 NOT NULL,
    `keepalive` INT(11) DEFAULT 0 NOT NULL,
    `partition` INT(11) DEFAULT 0 NOT NULL,
    CONSTRAINT ruid_idx UNIQUE (`ruid`),
    INDEX account_contact_idx (`username`, `domain`, `contact`),
    INDEX expires_idx (`expires`),
    INDEX tcpcon_idx (`connection_id`),
    INDEX connection_idx (`server_id`, `connection_id`)
);
INSERT INTO version (table_name, table_version) SELECT 'location', 9 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'location');

-- location_attrs (Kamailio module usrloc, table version 1)
CREATE TABLE IF NOT EXISTS `location_attrs` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `ruid` VARCHAR(64) DEFAULT '' NOT NULL,
    `username` VARCHAR(64) DEFAULT '' NOT NULL,
    `domain` VARCHAR(64) DEFAULT NULL,
    `aname` VARCHAR(64) DEFAULT '' NOT NULL,
    `atype` INT(11) DEFAULT 0 NOT NULL,
    `avalue` VARCHAR(512) DEFAULT '' NOT NULL,
    `last_modified` DATETIME DEFAULT '2000-01-01 00:00:01' NOT NULL,
    INDEX account_record_idx (`username`, `domain`, `ruid`),
    INDEX last_modified_idx (`last_modified`)
);
INSERT INTO version (table_name, table_version) SELECT 'location_attrs', 1 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'location_attrs');

-- aliases (Kamailio module registrar, table version 8)
CREATE TABLE IF NOT EXISTS `aliases` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `ruid` VARCHAR(64) DEFAULT '' NOT NULL,
    `username` VARCHAR(64) DEFAULT '' NOT NULL,
    `domain` VARCHAR(64) DEFAULT NULL,
    `contact` VARCHAR(255) DEFAULT '' NOT NULL,
    `received` VARCHAR(255) DEFAULT NULL,
    `path` VARCHAR(512) DEFAULT NULL,
    `expires` DATETIME DEFAULT '2030-05-28 21:32:15' NOT NULL,
    `q` FLOAT(10,2) DEFAULT 1.0 NOT NULL,
    `callid` VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
    `cseq` INT(11) DEFAULT 1 NOT NULL,
    `last_modified` DATETIME DEFAULT '2000-01-01 00:00:01' NOT NULL,
    `flags` INT(11) DEFAULT 0 NOT NULL,
    `cflags` INT(11) DEFAULT 0 NOT NULL,
    `user_agent` VARCHAR(255) DEFAULT '' NOT NULL,
    `socket` VARCHAR(64) DEFAULT NULL,
    `methods` INT(11) DEFAULT NULL,
    `instance` VARCHAR(255) DEFAULT NULL,
    `reg_id` INT(11) DEFAULT 0 NOT NULL,
    `server_id` INT(11) DEFAULT 0 NOT NULL,
    `connection_id` INT(11) DEFAULT 0 NOT NULL,
    `keepalive` INT(11) DEFAULT 0 NOT NULL,
    `partition` INT(11) DEFAULT 0 NOT NULL,
    CONSTRAINT ruid_idx UNIQUE (`ruid`),
    INDEX account_contact_idx (`username`, `domain`, `contact`),
    INDEX expires_idx (`expires`)
);
INSERT INTO version (table_name, table_version) SELECT 'aliases', 8 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'aliases');

-- domain (Kamailio module domain, table version 2)
CREATE TABLE IF NOT EXISTS `domain` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `domain` VARCHAR(64) NOT NULL,
    `did` VARCHAR(64) DEFAULT NULL,
    `last_modified` DATETIME DEFAULT '2000-01-01 00:00:01' NOT NULL,
    CONSTRAINT domain_idx UNIQUE (`domain`)
);
INSERT INTO version (table_name, table_version) SELECT 'domain', 2 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'domain');

-- domain_attrs (Kamailio module domain, table version 1)
CREATE TABLE IF NOT EXISTS `domain_attrs` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `did` VARCHAR(64) NOT NULL,
    `name` VARCHAR(32) NOT NULL,
    `type` INT UNSIGNED NOT NULL,
    `value` VARCHAR(255) NOT NULL,
    `last_modified` DATETIME DEFAULT '2000-01-01 00:00:01' NOT NULL,
    INDEX domain_attrs_idx (`did`, `name`)
);
INSERT INTO version (table_name, table_version) SELECT 'domain_attrs', 1 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'domain_attrs');

-- trusted (Kamailio module permissions, table version 6)
CREATE TABLE IF NOT EXISTS `trusted` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `src_ip` VARCHAR(50) NOT NULL,
    `proto` VARCHAR(4) NOT NULL,
    `from_pattern` VARCHAR(64) DEFAULT NULL,
    `ruri_pattern` VARCHAR(64) DEFAULT NULL,
    `tag` VARCHAR(64),
    `priority` INT(11) DEFAULT 0 NOT NULL,
    INDEX peer_idx (`src_ip`)
);
INSERT INTO version (table_name, table_version) SELECT 'trusted', 6 FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'trusted');
