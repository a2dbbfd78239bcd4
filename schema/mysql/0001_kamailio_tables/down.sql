-- Reverting drops every table the up migration may have created (Kamailio's
-- too, if they were there before): serlua never runs this itself.
DROP TABLE IF EXISTS `trusted`;
DROP TABLE IF EXISTS `domain_attrs`;
DROP TABLE IF EXISTS `domain`;
DROP TABLE IF EXISTS `aliases`;
DROP TABLE IF EXISTS `location_attrs`;
DROP TABLE IF EXISTS `location`;
DROP TABLE IF EXISTS `subscriber`;
DROP TABLE IF EXISTS `version`;
