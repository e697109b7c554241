CREATE DATABASE sluice;
CREATE DATABASE app_development;
CREATE DATABASE app_staging;
CREATE DATABASE app_production;
