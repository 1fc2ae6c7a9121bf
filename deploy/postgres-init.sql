CREATE DATABASE complaints_intake;
CREATE DATABASE complaints_resolution;
CREATE DATABASE complaints_followup;
CREATE DATABASE complaints_learning;
CREATE DATABASE complaints_keyring;
