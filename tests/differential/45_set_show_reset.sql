-- SET / SHOW / RESET; SET application_name sends ParameterStatus.
--- query
SET application_name = 'diff-app'
--- query
SHOW application_name
--- query
SET work_mem = '8MB'
--- query
SHOW work_mem
--- query
RESET work_mem
--- query
SHOW work_mem
