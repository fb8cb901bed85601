-- Unicode in identifiers, literals and results.
--- setup
CREATE TABLE "tåble" ("naïve" text);
INSERT INTO "tåble" VALUES ('日本語'), ('emoji 🎉'), ('ŝ');
--- query
SELECT "naïve", length("naïve"), octet_length("naïve") FROM "tåble" ORDER BY 1
--- query
SELECT 'Ünïcödé' AS "列"
